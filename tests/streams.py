"""Testbench helpers shared by the amaranth-simulator tests of streaming units."""


async def feed(ctx, prng, strm, items, stall):
    """Offer ``items`` on stream ``strm`` one by one, waiting a cycle with probability
    ``stall`` (drawn from the numpy generator ``prng``) before each; the payload holds until
    taken."""
    for it in items:
        while prng.random() < stall:
            await ctx.tick()
        ctx.set(strm.payload, it)
        ctx.set(strm.valid, 1)
        await ctx.tick().until(strm.ready)
        ctx.set(strm.valid, 0)
