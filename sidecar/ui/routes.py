"""Every /ui route in one table, with names for url() in templates and redirects."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from . import api, chat, history, keys, lifecycle, pages, status, usage


def setup_ui_routes(app: web.Application, templates_dir: Path) -> None:
    router = app.router
    router.add_get("/ui", pages.chat, name="ui_chat")
    router.add_get("/ui/login", pages.login, name="ui_login")
    router.add_get("/ui/images", pages.images, name="ui_images")
    router.add_get("/ui/music", pages.music, name="ui_music")
    router.add_get("/ui/admin/users", pages.admin, name="ui_admin")
    router.add_static("/ui/static", templates_dir / "static", name="ui_static")
    router.add_post("/ui/api/auth/login", api.login, name="ui_login_api")
    router.add_post("/ui/api/auth/logout", api.logout, name="ui_logout")
    router.add_get("/ui/api/auth/me", api.me, name="ui_me")
    router.add_get("/ui/api/user/settings", api.get_settings, name="ui_settings")
    router.add_put("/ui/api/user/settings", api.put_settings, name="ui_settings_put")
    router.add_get("/ui/api/conversations", api.list_conversations, name="ui_conversations")
    router.add_post("/ui/api/conversations", api.create_conversation, name="ui_conversation_new")
    conversation = "/ui/api/conversations/{conversation_id}"
    router.add_get(conversation, api.get_conversation, name="ui_conversation")
    router.add_patch(conversation, api.update_conversation, name="ui_conversation_update")
    router.add_delete(conversation, api.delete_conversation, name="ui_conversation_delete")
    router.add_post(f"{conversation}/messages", chat.send_message, name="ui_messages")
    router.add_post("/ui/api/images", api.images, name="ui_images_api")
    router.add_post("/ui/api/music", api.music, name="ui_music_api")
    router.add_get("/ui/api/admin/users", api.list_users, name="ui_users")
    router.add_post("/ui/api/admin/users", api.create_user, name="ui_user_new")
    router.add_patch("/ui/api/admin/users/{username}", api.update_user, name="ui_user_update")
    router.add_delete("/ui/api/admin/users/{username}", api.delete_user, name="ui_user_delete")
    router.add_get("/ui/status", pages.status, name="ui_status")
    router.add_get("/ui/api/status", status.status, name="ui_status_api")
    router.add_get("/ui/api/models", status.models, name="ui_models")
    router.add_get("/ui/api/history/{kind}", history.list_items, name="ui_history")
    router.add_delete(
        "/ui/api/history/items/{item_id}", history.delete_item, name="ui_history_delete"
    )
    router.add_get("/ui/usage", usage.page, name="ui_usage")
    router.add_get("/ui/api/usage", usage.totals, name="ui_usage_api")
    # API keys (admin): the page, list/create, edit, revoke, rotate
    router.add_get("/ui/admin/keys", keys.page, name="ui_admin_keys")
    router.add_get("/ui/api/admin/keys", keys.list_keys, name="ui_keys")
    router.add_post("/ui/api/admin/keys", keys.create_key, name="ui_key_new")
    router.add_patch("/ui/api/admin/keys/{name}", keys.update_key, name="ui_key_update")
    router.add_post("/ui/api/admin/keys/{name}/revoke", keys.revoke_key, name="ui_key_revoke")
    router.add_post("/ui/api/admin/keys/{name}/rotate", keys.rotate_key, name="ui_key_rotate")
    # The model lifecycle on the status page (admin): load and unload
    model = "/ui/api/models/{id:.+}"
    router.add_post(f"{model}/load", lifecycle.load, name="ui_model_load")
    router.add_post(f"{model}/unload", lifecycle.unload, name="ui_model_unload")
