"""The tool bus: declared tools, validated calls, recorded and replayable invocations."""
