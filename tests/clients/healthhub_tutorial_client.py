# The HealthHub client tutorial's Python client (tutorial 07, "Python Client (for testing)"), as written — plus the
# `import json` the tutorial forgets, and, for the test, a base URL, a count to stop after, and each
# frame printed raw (JSON-quoted) so the test can compare it byte for byte with what was published.
import asyncio
import json
import sys

import websockets


async def listen_notifications(user_id: str, token: str, base: str, count: int):
    uri = f"{base}/ws/{user_id}?token={token}"

    async with websockets.connect(uri) as websocket:
        print("Connected to notifications", flush=True)

        received = 0
        async for message in websocket:
            notification = json.loads(message)
            print(f"Received: {notification}", file=sys.stderr, flush=True)
            print("RAW " + json.dumps(message), flush=True)
            received += 1
            if received >= count:
                break


asyncio.run(listen_notifications(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
