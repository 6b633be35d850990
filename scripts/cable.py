#!/usr/bin/env python3
"""A TCP proxy that plays a network cable for fault tests: SIGUSR1 cuts every connection and refuses
new ones (the network to the hub is gone), SIGUSR2 restores it.  cable.py LISTEN_PORT TARGET_PORT"""
import asyncio, signal, sys

listen_port, target_port = int(sys.argv[1]), int(sys.argv[2])
up = True
links = set()

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()

async def handle(reader, writer):
    if not up:
        writer.close()
        return
    try:
        target_reader, target_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        writer.close()
        return
    tasks = {asyncio.ensure_future(pipe(reader, target_writer)), asyncio.ensure_future(pipe(target_reader, writer))}
    links.update(tasks)
    await asyncio.wait(tasks)
    links.difference_update(tasks)

def cut():
    global up
    up = False
    for task in list(links):
        task.cancel()

def restore():
    global up
    up = True

async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, cut)
    loop.add_signal_handler(signal.SIGUSR2, restore)
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()

asyncio.run(main())
