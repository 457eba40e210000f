"""The README's asyncio example: classify a clip, then stream it and print its events."""

import asyncio

from hark.client import AsyncHarkClient, Detection


async def main() -> None:
    async with AsyncHarkClient("127.0.0.1:50051", token=None) as client:
        print((await client.classify("/tmp/yes.wav")).label)
        async for item in client.stream("/tmp/yes.wav", realtime=False):
            if isinstance(item, Detection):
                print(item.label, item.time_s)


asyncio.run(main())
