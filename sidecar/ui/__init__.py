"""The browser UI at /ui: pages, the UI API, and the guards in front of them."""
