"""``gateway.yaml`` and the environment: what an admin sees when they get them right or wrong."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import textwrap
from pathlib import Path

import pytest
from yarl import URL

from sidecar.config import AliasConfig, load_config, parse_config
from sidecar.config.schema import ModelConfig, QueueConfig, Timeouts
from sidecar.errors import ConfigError, SettingsError
from sidecar.settings import BackendTlsDefaults, Settings

from .certs import issue, make_ca
from .conftest import TOKEN, clean_env, gateway_cli, line_of

ROOT = Path(__file__).resolve().parents[1]
NO_TLS_DEFAULTS = BackendTlsDefaults()


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def parse(text: str, source: Path = Path("/etc/gateway/gateway.yaml"), **environ: str):
    return parse_config(text.encode(), source, environ, NO_TLS_DEFAULTS)


def issues_of(text: str, source: Path = Path("/etc/gateway/gateway.yaml"), **environ: str):
    """``{(key path, line, message)}`` of the ConfigError that ``text`` must raise."""
    with pytest.raises(ConfigError) as caught:
        parse(text, source, **environ)
    return {(issue.path, issue.line, issue.message) for issue in caught.value.issues}


# -- a valid config ---------------------------------------------------------------------------

VALID = yaml_text(
    """
    version: 1
    classes:
      gpu_heavy: {chat: 3}
    defaults:
      timeouts: {connect_s: 2}
    backends:
      big:
        url: http://10.0.0.5:11434/v1/
        class: gpu_heavy
        capabilities: [chat, embeddings]
        limits: {embeddings: 6}
        queue: {max: 4}
      small:
        url: https://gpu1.lan:8000/v1
        timeouts: {read_s: 60}
        models:
          - tiny
          - {id: tiny-embed, capabilities: [embeddings]}
    aliases:
      fast: {backend: small, model: tiny, max_tokens_cap: 1024, temperature_cap: 0.7}
      heavy: {backend: big, model: llama3, tools: false}
    """
)


def test_valid_config_becomes_typed_data() -> None:
    config = parse(VALID)
    big, small = config.backends
    assert config.digest == hashlib.sha256(VALID.encode()).hexdigest()
    assert config.backend("small") is small and config.backend("nowhere") is None

    assert big.name == "big"
    assert big.url == URL("http://10.0.0.5:11434/v1")
    assert big.backend_class == "gpu_heavy"
    assert big.capabilities == frozenset({"chat", "embeddings"})
    # chat from the YAML's `classes` override, embeddings from the backend's own limits.
    assert dict(big.limits) == {"chat": 3, "embeddings": 6}
    assert big.queue == QueueConfig(max=4, timeout_s=30.0)
    assert big.health.readiness == "/v1/models"
    assert big.timeouts == Timeouts(connect_s=2, read_s=300.0, stream_idle_s=120.0)
    assert big.models is None

    # No class given: the built-in gpu_light limits for the default capabilities.
    assert small.backend_class == "gpu_light"
    assert dict(small.limits) == {"chat": 4, "completions": 4, "embeddings": 8}
    assert small.timeouts == Timeouts(connect_s=2, read_s=60, stream_idle_s=120.0)
    assert small.models == (
        ModelConfig("tiny", frozenset({"chat", "completions", "embeddings"})),
        ModelConfig("tiny-embed", frozenset({"embeddings"})),
    )
    assert small.queue == QueueConfig(max=0, timeout_s=0)

    assert dict(config.aliases) == {
        "fast": AliasConfig("fast", "small", "tiny", max_tokens_cap=1024, temperature_cap=0.7),
        "heavy": AliasConfig("heavy", "big", "llama3", tools=False),
    }


def test_config_dataclasses_are_frozen() -> None:
    config = parse(VALID)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.backends[0].url = URL("http://elsewhere")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.aliases["fast"].max_tokens_cap = 10**6  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.backends = ()  # type: ignore[misc]


def test_config_mappings_are_read_only() -> None:
    """Validated config is data that nothing downstream can change by accident."""
    config = parse(VALID)
    with pytest.raises(TypeError):
        config.backends[0].limits["chat"] = 1000  # type: ignore[index]
    with pytest.raises(TypeError):
        config.aliases["evil"] = config.aliases["fast"]  # type: ignore[index]


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(VALID)
    config = load_config(path, {}, NO_TLS_DEFAULTS)
    assert config.source == path
    assert [backend.name for backend in config.backends] == ["big", "small"]


def test_load_config_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yaml", {}, NO_TLS_DEFAULTS)
    assert "cannot read" in caught.value.render()
    assert str(tmp_path / "absent.yaml") in caught.value.render()


# -- every problem at once, with key path and line ---------------------------------------------

BROKEN = yaml_text(
    """
    version: 1
    backends:
      mock:
        url: http://127.0.0.1:9101/v1
        colour: blue                         # unknown key
        limits: {chat: -2}                   # negative limit
      broken:
        url: ftp://example.lan/v1            # bad url
        models: [m1]
    aliases:
      fast: {backend: nowhere, model: m1}    # unknown backend
      fast: {backend: mock, model: m1}       # duplicate key
    """
)


# (key path, line, a fragment of the message) for each of BROKEN's five problems.
BROKEN_ISSUES = {
    ("backends.mock.colour", line_of(BROKEN, "unknown key"), "unknown key"),
    ("backends.mock.limits.chat", line_of(BROKEN, "negative limit"), "must be at least 1"),
    ("backends.broken.url", line_of(BROKEN, "bad url"), "http:// or https://"),
    ("aliases.fast.backend", line_of(BROKEN, "unknown backend"), "nowhere"),
    ("aliases.fast", line_of(BROKEN, "duplicate key"), "duplicate key"),
}


def test_every_problem_is_reported_with_key_path_and_line() -> None:
    found = issues_of(BROKEN)
    assert {(path, line) for path, line, _ in found} == {(p, n) for p, n, _ in BROKEN_ISSUES}
    for path, line, fragment in BROKEN_ISSUES:
        message = next(m for p, n, m in found if (p, n) == (path, line))
        assert fragment in message, (path, message)


def test_rendered_errors_name_file_line_and_key_path() -> None:
    source = Path("/etc/gateway/gateway.yaml")
    with pytest.raises(ConfigError) as caught:
        parse(BROKEN, source)
    rendered = caught.value.render().splitlines()
    assert len(rendered) == 5
    for path, line, _ in BROKEN_ISSUES:
        assert any(entry.startswith(f"{source}:{line}: {path}: ") for entry in rendered), path


def test_invalid_yaml_reports_the_line() -> None:
    text = yaml_text(
        """
        version: 1
        backends:
          mock:
            url: http://a: b            # not YAML
        """
    )
    ((_, line, message),) = issues_of(text)
    assert line == line_of(text, "not YAML")
    assert message.startswith("invalid YAML")


def test_not_utf8_is_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            b"version: 1\nbackends: {a: {url: \xff}}\n", Path("g.yaml"), {}, NO_TLS_DEFAULTS
        )
    assert "UTF-8" in caught.value.render()


def test_unknown_yaml_tag_is_a_config_error_with_key_path_and_line() -> None:
    """A tag PyYAML cannot construct is a problem in the file, not a crash of the loader."""
    text = yaml_text(
        """
        version: 1
        backends:
          mock:
            url: !secret vllm_url        # tag
            limits: {chat: !!int many}   # bad int
        """
    )
    found = issues_of(text)
    paths = {(path, line) for path, line, _ in found}
    assert ("backends.mock.url", line_of(text, "# tag")) in paths
    assert ("backends.mock.limits.chat", line_of(text, "bad int")) in paths


def test_errors_in_defaults_name_the_defaults_key_once() -> None:
    """A bad value under ``defaults`` is one problem, at its own key path and line."""
    text = yaml_text(
        """
        version: 1
        defaults:
          timeouts: {connect_s: -1}        # bad default
          health: {intervall_s: 5}         # typo
        backends:
          a: {url: http://a.lan/v1}
          b: {url: http://b.lan/v1}
        """
    )
    found = issues_of(text)
    assert {(path, line) for path, line, _ in found} == {
        ("defaults.timeouts.connect_s", line_of(text, "bad default")),
        ("defaults.health.intervall_s", line_of(text, "typo")),
    }
    assert len(found) == 2


def test_yaml_merge_keys_may_override_merged_values() -> None:
    text = yaml_text(
        """
        version: 1
        backends:
          a: &common
            url: http://a.lan/v1
            class: mock
          b:
            <<: *common
            url: http://b.lan/v1
        """
    )
    config = parse(text)
    b = config.backend("b")
    assert b is not None
    assert b.url == URL("http://b.lan/v1")
    assert b.backend_class == "mock"


def test_alias_to_a_model_the_backend_does_not_list() -> None:
    text = yaml_text(
        """
        version: 1
        backends:
          small: {url: http://a.lan/v1, models: [tiny]}
        aliases:
          fast: {backend: small, model: huge}     # not listed
        """
    )
    ((path, line, message),) = issues_of(text)
    assert (path, line) == ("aliases.fast.model", line_of(text, "not listed"))
    assert "huge" in message


# -- environment substitution ----------------------------------------------------------------


SUBSTITUTED = yaml_text(
    """
    version: 1
    backends:
      vllm:
        url: ${VLLM_URL}
        api_key: ${VLLM_API_KEY:-none-set}
        models: ["${MODEL:-llama3}", "literal-$${NOT_A_VAR}"]
    """
)


def test_variables_are_substituted_from_the_environment() -> None:
    config = parse(
        SUBSTITUTED, VLLM_URL="https://gpu1.lan:8000/v1", VLLM_API_KEY="sk-lan", MODEL="qwen"
    )
    (vllm,) = config.backends
    assert vllm.url == URL("https://gpu1.lan:8000/v1")
    assert vllm.api_key == "sk-lan"
    assert [model.id for model in vllm.models or ()] == ["qwen", "literal-${NOT_A_VAR}"]


def test_defaults_apply_when_variables_are_unset_or_empty() -> None:
    (vllm,) = parse(SUBSTITUTED, VLLM_URL="http://h.lan/v1", MODEL="").backends
    assert vllm.api_key == "none-set"
    assert [model.id for model in vllm.models or ()] == ["llama3", "literal-${NOT_A_VAR}"]


def test_missing_variable_is_reported_with_its_key_path() -> None:
    found = issues_of(SUBSTITUTED)
    assert (
        "backends.vllm.url",
        line_of(SUBSTITUTED, "url:"),
        "environment variable VLLM_URL is not set",
    ) in found


# -- TLS files ----------------------------------------------------------------------------------


def test_relative_tls_files_resolve_against_the_yaml_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    ca = make_ca(conf / "pki", "ca")
    (conf / "pki" / "ca.pem").write_bytes(ca.cert_path.read_bytes())
    issue(ca, conf / "pki", "gw", server=False)
    text = yaml_text(
        """
        version: 1
        backends:
          vllm:
            url: https://gpu1.lan:8000/v1
            tls: {ca_bundle: pki/ca.pem, client_cert: pki/gw.crt, client_key: pki/gw.key}
        """
    )
    monkeypatch.chdir(tmp_path)  # the process's cwd must not matter
    (vllm,) = parse(text, conf / "gateway.yaml").backends
    assert vllm.tls.ca_bundle == conf / "pki" / "ca.pem"
    assert vllm.tls.client_cert == conf / "pki" / "gw.crt"
    assert vllm.tls.client_key == conf / "pki" / "gw.key"
    assert vllm.tls.verify is True


def test_missing_tls_file_names_its_key_path(tmp_path: Path) -> None:
    text = yaml_text(
        """
        version: 1
        backends:
          vllm:
            url: https://gpu1.lan:8000/v1
            tls:
              ca_bundle: pki/missing.pem      # missing
        """
    )
    ((path, line, message),) = issues_of(text, tmp_path / "gateway.yaml")
    assert (path, line) == ("backends.vllm.tls.ca_bundle", line_of(text, "# missing"))
    assert "pki/missing.pem" in message


def test_environment_tls_defaults_apply_without_a_tls_block(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "lan-ca")
    defaults = BackendTlsDefaults(verify=False, ca_bundle=ca.cert_path)
    text = "version: 1\nbackends:\n  vllm: {url: https://gpu1.lan/v1}\n"
    (vllm,) = parse_config(text.encode(), Path("g.yaml"), {}, defaults).backends
    assert vllm.tls.verify is False
    assert vllm.tls.ca_bundle == ca.cert_path
    assert vllm.ssl_context is not None


# -- gateway check-config -------------------------------------------------------------------


def test_check_config_accepts_the_shipped_config() -> None:
    result = gateway_cli("check-config", str(ROOT / "gateway.yaml"), env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_config_lists_every_error_with_file_line_and_key_path(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(BROKEN)
    result = gateway_cli("check-config", str(path), env=clean_env())
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr
    for key_path, line, _ in BROKEN_ISSUES:
        assert sum(entry.startswith(f"{path}:{line}: {key_path}: ") for entry in lines) == 1
    # One line per problem, then the count.
    assert len(lines) == 6, result.stderr
    assert lines[-1] == f"{path}: 5 errors"


def test_check_config_reports_an_unloadable_ca_bundle_with_key_path_and_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "ca.pem").write_text("this is not a certificate\n")
    text = yaml_text(
        """
        version: 1
        backends:
          vllm:
            url: https://gpu1.lan:8000/v1
            tls: {ca_bundle: ca.pem}         # garbage
        """
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    result = gateway_cli("check-config", str(path), env=clean_env())
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    line = line_of(text, "# garbage")
    assert f"{path}:{line}: backends.vllm.tls.ca_bundle: " in result.stderr, result.stderr


def test_check_config_survives_an_unknown_tag(tmp_path: Path) -> None:
    text = "version: 1\nbackends:\n  mock:\n    url: !secret vllm_url\n"
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    result = gateway_cli("check-config", str(path), env=clean_env())
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"{path}:4: backends.mock.url: " in result.stderr, result.stderr


# -- settings from the environment ---------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({}, "no bearer token"),
        ({"GATEWAY_BEARER_TOKEN": ""}, "empty"),
        ({"GATEWAY_BEARER_TOKEN": "   "}, "empty"),
        ({"GATEWAY_BEARER_TOKEN": "changeme"}, "placeholder"),
        ({"GATEWAY_BEARER_TOKEN": "CHANGEME"}, "placeholder"),
        ({"GATEWAY_BEARER_TOKEN": "your-token-goes-here-please"}, "placeholder"),
        ({"GATEWAY_BEARER_TOKEN": "<your-token>"}, "placeholder"),
        ({"GATEWAY_BEARER_TOKEN": "s3cr3t-abc"}, "too short (10 characters)"),
        ({"GATEWAY_BEARER_TOKEN": "a" * 32}, "not random enough"),
        ({"GATEWAY_BEARER_TOKENS": f"alice:{TOKEN},bob:changeme"}, "placeholder"),
    ],
)
def test_settings_refuse_a_missing_or_weak_token(environ: dict[str, str], reason: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(environ)
    message = str(caught.value)
    assert reason in message
    assert "GATEWAY_BEARER_TOKEN" in message
    for value in environ.values():
        if value.strip() and len(value) > 8:
            assert value not in message  # the rejected token is not echoed into logs


def test_list_entry_errors_say_which_entry() -> None:
    with pytest.raises(SettingsError, match="GATEWAY_BEARER_TOKENS entry 2 is a placeholder"):
        Settings.from_env({"GATEWAY_BEARER_TOKENS": f"alice:{TOKEN},bob:changeme"})


def test_named_tokens() -> None:
    alice, bob = "alice-7f3a9c2e1b4d6f80", "bob-0e9d8c7b6a5f4e3d"
    settings = Settings.from_env(
        {"GATEWAY_BEARER_TOKEN": TOKEN, "GATEWAY_BEARER_TOKENS": f"alice:{alice}, bob:{bob}"}
    )
    assert [(t.name, t.value) for t in settings.bearer_tokens] == [
        ("default", TOKEN),
        ("alice", alice),
        ("bob", bob),
    ]
    assert alice not in repr(settings)  # token values stay out of reprs and logs


def test_named_tokens_alone_are_enough() -> None:
    settings = Settings.from_env({"GATEWAY_BEARER_TOKENS": f"ci:{TOKEN}"})
    assert [(t.name, t.value) for t in settings.bearer_tokens] == [("ci", TOKEN)]


def test_named_token_values_are_trimmed() -> None:
    """``name: token`` must not store a leading space no client could ever send."""
    settings = Settings.from_env({"GATEWAY_BEARER_TOKENS": f"alice: {TOKEN}"})
    assert [(t.name, t.value) for t in settings.bearer_tokens] == [("alice", TOKEN)]


def test_token_names_must_be_unique() -> None:
    with pytest.raises(SettingsError, match="unique"):
        Settings.from_env({"GATEWAY_BEARER_TOKENS": f"ci:{TOKEN},ci:{TOKEN[::-1]}"})


def test_trusted_proxies_are_parsed() -> None:
    settings = Settings.from_env(
        {"GATEWAY_BEARER_TOKEN": TOKEN, "TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7 ::1"}
    )
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("::1/128"),
    )


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("TRUSTED_PROXIES", "10.0.0.0/8,caddy.lan", "'caddy.lan' is not an IP address or CIDR"),
        ("GATEWAY_ACCESS_LOG", "maybe", "must be true or false"),
        ("BACKEND_VERIFY_TLS", "nope", "must be true or false"),
        ("GATEWAY_PORT", "http", "must be an integer"),
        ("GATEWAY_PORT", "70000", "must be at most 65535"),
        ("GATEWAY_CONFIG_POLL_S", "-1", "must be at least 0"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"GATEWAY_BEARER_TOKEN": TOKEN, name: value})
    assert str(caught.value).startswith(name)
    assert fragment in str(caught.value)


def test_boolean_settings_accept_the_usual_spellings() -> None:
    for text, expected in [("yes", True), ("On", True), ("0", False), ("false", False)]:
        env = {"GATEWAY_BEARER_TOKEN": TOKEN, "GATEWAY_ACCESS_LOG": text}
        assert Settings.from_env(env).access_log is expected


def test_serve_without_a_token_exits_2_with_the_reason(tmp_path: Path) -> None:
    env = clean_env(GATEWAY_SOCKET=str(tmp_path / "gw.sock"), GATEWAY_DATA_DIR=str(tmp_path))
    result = gateway_cli("serve", env=env)
    assert result.returncode == 2
    assert "no bearer token" in result.stderr
    assert "GATEWAY_BEARER_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "gw.sock").exists()


def test_serve_with_a_placeholder_token_exits_2(tmp_path: Path) -> None:
    env = clean_env(GATEWAY_BEARER_TOKEN="changeme", GATEWAY_SOCKET=str(tmp_path / "gw.sock"))
    result = gateway_cli("serve", env=env)
    assert result.returncode == 2
    assert "placeholder" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_broken_config_exits_2_listing_the_errors(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(BROKEN)
    env = clean_env(
        GATEWAY_BEARER_TOKEN=TOKEN,
        GATEWAY_CONFIG=str(path),
        GATEWAY_SOCKET=str(tmp_path / "gw.sock"),
    )
    result = gateway_cli("serve", env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for key_path, line, _ in BROKEN_ISSUES:
        assert f"{path}:{line}: {key_path}: " in result.stderr
    assert not (tmp_path / "gw.sock").exists()
