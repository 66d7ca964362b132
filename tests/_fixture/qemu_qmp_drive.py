"""Drives ferry with QEMU's own python library, qemu.qmp (installed by scripts/setup.sh).

Usage: qemu_qmp_drive.py SRC_SOCKET DST_SOCKET MIGRATE_URI
Prints one JSON object with what the library saw; exits non-zero on any unexpected failure.
"""
import asyncio
import json
import sys

from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol


async def next_event(listener, name, timeout=60.0):
    """Returns the next event called `name` from `listener`, skipping others."""
    while True:
        event = await asyncio.wait_for(listener.get(), timeout)
        if event["event"] == name:
            return event


async def main(src_path: str, dst_path: str, uri: str) -> dict:
    seen: dict = {}
    src = QMPClient("ferry-source")
    dst = QMPClient("ferry-destination")
    await src.connect(src_path)
    await dst.connect(dst_path)
    seen["greeting"] = {"QMP": {"version": src.greeting.QMP.version}}
    seen["dst_status_before"] = (await dst.execute("query-status"))["status"]

    # Clients past ferry's 16 wait in the listen backlog: the 17th connects once one leaves.
    others = []
    for i in range(15):
        c = QMPClient(f"extra-{i}")
        await c.connect(src_path)
        others.append(c)
    late = QMPClient("seventeenth")
    late_connect = asyncio.ensure_future(late.connect(src_path))
    await asyncio.sleep(0.2)
    seen["seventeenth_waited"] = not late_connect.done()
    await others.pop().disconnect()
    await asyncio.wait_for(late_connect, 30)
    seen["seventeenth_status"] = (await late.execute("query-status"))["status"]
    await late.disconnect()
    for c in others:
        await c.disconnect()

    # Events: stop/cont give STOP and RESUME through the library's listener.
    with src.listener() as events:
        await src.execute("stop")
        seen["stop_event"] = dict(await next_event(events, "STOP"))
        await src.execute("cont")
        seen["resume_event"] = dict(await next_event(events, "RESUME"))

    # An error reply becomes ExecuteError.
    try:
        await src.execute("migrate", {"uri": "bogus:nowhere"})
        seen["execute_error"] = None
    except ExecuteError as e:
        seen["execute_error"] = {"class": e.error_class, "desc": str(e)}
    try:
        await src.execute("no-such-command")
        seen["command_not_found"] = None
    except ExecuteError as e:
        seen["command_not_found"] = e.error_class

    # Migrate, following MIGRATION events to completion.
    with src.listener("MIGRATION") as migration:
        await src.execute("migrate", {"uri": uri})
        statuses = []
        while not statuses or statuses[-1] not in ("completed", "failed", "canceled"):
            event = await next_event(migration, "MIGRATION")
            statuses.append(event["data"]["status"])
        seen["migration_events"] = statuses
    seen["query_migrate"] = (await src.execute("query-migrate"))["status"]
    seen["src_status_after"] = (await src.execute("query-status"))["status"]
    seen["dst_status_after"] = (await dst.execute("query-status"))["status"]
    await src.disconnect()
    await dst.disconnect()
    return seen


def legacy_status(path: str) -> str:
    """The legacy synchronous API (what iotests and older scripts use), on its own event loop."""
    legacy = QEMUMonitorProtocol(path)
    legacy.connect(negotiate=True)
    try:
        return legacy.cmd("query-status")["status"]
    finally:
        legacy.close()


if __name__ == "__main__":
    result = asyncio.run(main(*sys.argv[1:4]))
    result["legacy_status"] = legacy_status(sys.argv[2])
    print(json.dumps(result))
