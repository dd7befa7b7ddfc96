"""Generated images and songs, kept per user with their prompts.

The playgrounds generate through ``ui.api``, which records each result here; the pages
list the newest ``MAX_MEDIA_LISTED`` again after a reload (an image the image store has
pruned by age is left out), and a user keeps at most ``MAX_MEDIA_KEPT`` items of a kind.
An item stores the file's name only: an image's link is signed afresh each time it is
listed (links expire), a song's is the UI's audio path. Deleting an item forgets it; an
image file that no other item of any user refers to is removed from the image store as
well (a song's file lives on the music backend, which offers no delete, so only its
reference goes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web
from yarl import URL

from ..errors import NotFound, StorageUnavailable
from ..images.store import ImageStore
from ..music.service import AUDIO_NAME, AUDIO_ROUTE
from ..typedefs import IMAGE_STORE, UI_STATE, UI_USER, URL_SIGNER

log = logging.getLogger("gateway.ui")
KINDS = ("image", "music")


async def record(
    request: web.Request, kind: str, prompt: str, items: list[tuple[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Keep generated files for the user; the listed items (empty if storage failed)."""
    user = request[UI_USER]

    def add(db: Any) -> list[int]:
        return [db.add_media(user.id, kind, prompt, name, details) for name, details in items]

    try:
        ids = await request.app[UI_STATE].users.run(add)
    except StorageUnavailable:
        log.warning("a generated %s was shown but could not be kept in the history", kind)
        return []
    return [
        _public(request, {"id": i, "kind": kind, "prompt": prompt, "file": name, "details": d})
        for i, (name, d) in zip(ids, items, strict=True)
    ]


def image_name(url: str) -> str | None:
    """The image store's file name in a generated image's link."""
    name = URL(url).path.rsplit("/", 1)[-1]
    return name or None


def _public(request: web.Request, item: dict[str, Any]) -> dict[str, Any]:
    name = item["file"]
    if item["kind"] == "image":
        path = str(request.app.router["image_file"].url_for(name=name))
        url = str(URL(path).with_query(request.app[URL_SIGNER].sign(path)))
    else:
        url = AUDIO_ROUTE + name if AUDIO_NAME.match(name) else ""
    return {
        "id": item["id"],
        "kind": item["kind"],
        "prompt": item["prompt"],
        "url": url,
        "details": item.get("details") or {},
        "created_at": item.get("created_at"),
    }


def _kind(request: web.Request) -> str:
    kind = request.match_info["kind"]
    if kind not in KINDS:
        raise NotFound("No such history", code="history_not_found")
    return kind


async def list_items(request: web.Request) -> web.Response:
    kind, user = _kind(request), request[UI_USER]
    rows = await request.app[UI_STATE].users.run(lambda db: db.media(user.id, kind))
    if kind == "image":  # the image store prunes old files: list only what is still there
        store = request.app[IMAGE_STORE]
        rows = await asyncio.to_thread(
            lambda: [row for row in rows if store.path(row["file"]) is not None]
        )
    return web.json_response({"data": [_public(request, row) for row in rows]})


async def delete_item(request: web.Request) -> web.Response:
    text, user = request.match_info["item_id"], request[UI_USER]
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise NotFound("No such item", code="item_not_found")
    item_id = int(text)
    found = await request.app[UI_STATE].users.run(lambda db: db.delete_media(user.id, item_id))
    if found is None:
        raise NotFound("No such item", code="item_not_found")
    kind, name, still_used = found
    if kind == "image" and not still_used:
        await asyncio.to_thread(_remove_image, request.app[IMAGE_STORE], name)
    return web.Response(status=204)


def _remove_image(store: ImageStore, name: str) -> None:
    path = store.path(name)
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
