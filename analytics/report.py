"""`sluice report usage`: one tenant's (or every tenant's) usage export, saved to a file.

It asks the gateway (`SLUICE_URL`, default http://127.0.0.1:8080) with the admin key
(`SLUICE_ADMIN_KEY`, or the one `sluice up` keeps in `$SLUICE_HOME/admin_key`), which
forwards to the analytics process: with chDB only that process may open the data. The
answer is streamed to the file as it comes, with a progress bar.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO

import httpx
from rich.console import Console
from rich.progress import DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from broker.settings import SluiceSettings
from schemas.reporting import ADMIN_USAGE_EXPORT


class ReportFailed(Exception):
    """The export could not be fetched; the message says why."""


def admin_key() -> str | None:
    return SluiceSettings().known_admin_key()


def usage(*, tenant: str | None, start: str | None, end: str | None, fmt: str,
          group_by: str, output: Path | None, base_url: str | None = None,
          key: str | None = None, show_progress: bool = True) -> int:
    """Stream the export to `output` (stdout if None); returns the bytes written."""
    base_url = (base_url or os.environ.get("SLUICE_URL", "http://127.0.0.1:8080")).rstrip("/")
    key = key or admin_key()
    if not key:
        raise ReportFailed("set SLUICE_ADMIN_KEY (or start the stack with `sluice up`)")
    query = {"format": fmt, "group_by": group_by, "tenant": tenant, "from": start, "to": end}
    query = {k: v for k, v in query.items() if v is not None}
    sink: IO[bytes] = output.open("wb") if output else sys.stdout.buffer
    written = 0
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), DownloadColumn(),
                        TimeElapsedColumn(), console=Console(stderr=True),
                        disable=not show_progress or output is None)
    try:
        with progress, httpx.stream(ADMIN_USAGE_EXPORT.method, base_url + ADMIN_USAGE_EXPORT.path,
                                    params=query, headers={"Authorization": f"Bearer {key}"},
                                    timeout=httpx.Timeout(30, read=600)) as response:
            if response.status_code >= 400:
                raise ReportFailed(_error(response))
            task = progress.add_task(f"usage of {tenant or 'every tenant'}", total=None)
            for chunk in response.iter_bytes():
                sink.write(chunk)
                written += len(chunk)
                progress.update(task, completed=written)
    except httpx.HTTPError as exc:
        raise ReportFailed(f"cannot reach {base_url}: {exc}") from exc
    finally:
        if output:
            sink.close()
    return written


def _error(response: httpx.Response) -> str:
    response.read()
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error.get('param') or ''} {error['message']}".strip()
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} {response.text[:500]}"
