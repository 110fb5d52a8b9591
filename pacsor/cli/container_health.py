"""`pacsor health COMPONENT`: the healthcheck of a component's container.

Healthchecks run every few seconds in every container, so this path imports only what it
needs: the settings, nats-py and the liveness file (pynetdicom for scp, httpx for admin), not
the whole gateway. `pacsor` hands `health` here before importing its full command line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pacsor.config import ConfigError, Settings, load_settings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pacsor health",
        description="exit 0 when the component running in this container or machine is healthy",
    )
    parser.add_argument("component", help="scp, quiet-timer, ..., admin (as `pacsor run`)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as err:
        print(f"pacsor: {err}", file=sys.stderr)
        return 2
    return asyncio.run(check_component(settings, args.component))


async def check_component(settings: Settings, component: str) -> int:
    """One line: `ok`, or what is wrong; exit 1 when something is."""
    if component == "admin":
        import httpx

        url = f"http://127.0.0.1:{settings.admin_port}/health"
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                answer = await http.get(url)
        except httpx.HTTPError as err:
            print(f"admin: no answer from {url}: {str(err) or type(err).__name__}")
            return 1
        # 503 is the admin saying the pipeline is unhealthy: the admin itself is up.
        alive = answer.status_code in (200, 503)
        print(f"admin: {'ok' if alive else 'answered'} {answer.status_code} at {url}")
        return 0 if alive else 1
    if component == "scp":
        from pacsor.dicom.storage_scu import echo

        problem = await asyncio.to_thread(
            echo, "127.0.0.1", settings.port, settings.milvue_aet, settings.milvue_aet
        )
        problems = [f"scp: {problem}"] if problem else []
    else:
        from pacsor.jetstream.broker import connect, nats_access
        from pacsor.jetstream.liveness import liveness_file, probe

        access = nats_access(settings)
        url = str(access)
        try:
            nc = await asyncio.wait_for(connect(access, f"pacsor health {component}"), 5)
        except Exception as err:
            print(f"{component}: NATS unreachable at {url}: {str(err) or type(err).__name__}")
            return 1
        try:
            problems = await probe(nc, liveness_file(settings.data_dir, component))
        finally:
            await nc.close()
    print("; ".join(problems) or f"{component}: ok")
    return 1 if problems else 0
