"""Access control decisions: pure, table-driven."""

from http import HTTPStatus

import pytest

from streamcap.server.auth import AccessPolicy, Scope, bearer_token

TOKENS = {"view-token-1": Scope.VIEW, "publish-token-1": Scope.PUBLISH, "admin-token-1": Scope.ADMIN}


@pytest.mark.parametrize("need,token,allowed,status", [
    (Scope.PUBLISH, None, False, HTTPStatus.UNAUTHORIZED),
    (Scope.PUBLISH, "view-token-1", False, HTTPStatus.FORBIDDEN),
    (Scope.PUBLISH, "publish-token-1", True, HTTPStatus.OK),
    (Scope.PUBLISH, "admin-token-1", True, HTTPStatus.OK),
    (Scope.ADMIN, "publish-token-1", False, HTTPStatus.FORBIDDEN),
    (Scope.ADMIN, "admin-token-1", True, HTTPStatus.OK),
    (Scope.VIEW, None, False, HTTPStatus.UNAUTHORIZED),  # tokens exist: viewing needs one
    (Scope.VIEW, "view-token-1", True, HTTPStatus.OK),
    (Scope.VIEW, "publish-token-1", True, HTTPStatus.OK),
    (Scope.VIEW, "wrong-token-1", False, HTTPStatus.UNAUTHORIZED),
])
def test_scopes_are_ordered_and_checked(need, token, allowed, status):
    d = AccessPolicy(TOKENS).check(need, token)
    assert (d.allowed, d.status) == (allowed, status)
    if not allowed:
        assert d.reason


def test_with_no_token_configured_publish_and_admin_refuse_everyone_but_viewing_is_public():
    p = AccessPolicy({})
    assert p.check(Scope.VIEW, None).allowed
    for need in (Scope.PUBLISH, Scope.ADMIN):
        d = p.check(need, None)
        assert not d.allowed and d.status is HTTPStatus.UNAUTHORIZED
        assert "none is configured" in d.reason


def test_anonymous_publishing_only_when_the_config_says_so():
    assert AccessPolicy({}, anonymous_publish=True).check(Scope.PUBLISH, None).allowed
    assert not AccessPolicy({}, anonymous_publish=True).check(Scope.ADMIN, None).allowed


def test_public_view_can_be_forced_either_way():
    assert AccessPolicy(TOKENS, public_view=True).check(Scope.VIEW, None).allowed
    assert not AccessPolicy({}, public_view=False).check(Scope.VIEW, None).allowed


@pytest.mark.parametrize("origin,host,allowed_origins,ok", [
    (None, "127.0.0.1:8765", (), True),  # not a browser
    ("http://127.0.0.1:8765", "127.0.0.1:8765", (), True),  # the server's own pages
    ("https://evil.example", "127.0.0.1:8765", (), False),
    ("https://studio.example", "127.0.0.1:8765", ("https://studio.example",), True),
    ("https://studio.example", "127.0.0.1:8765", ("https://STUDIO.example/",), True),
    ("https://other.example", "127.0.0.1:8765", ("*",), True),
])
def test_browser_origins(origin, host, allowed_origins, ok):
    p = AccessPolicy(TOKENS, allowed_origins=allowed_origins)
    d = p.check(Scope.ADMIN, "admin-token-1", origin=origin, host=host)
    assert d.allowed is ok
    if not ok:
        assert d.status is HTTPStatus.FORBIDDEN and "origin" in d.reason


def test_token_from_header_or_query():
    assert bearer_token({"Authorization": "Bearer abc12345"}) == "abc12345"
    assert bearer_token({"authorization": "bearer   abc12345 "}) == "abc12345"
    assert bearer_token({}, {"token": ["q-token-1"]}) == "q-token-1"
    assert bearer_token({"Authorization": "Basic xyz"}, {}) is None
    assert bearer_token({}, {"token": [""]}) is None


def test_short_tokens_are_refused():
    with pytest.raises(ValueError):
        AccessPolicy({"short": Scope.VIEW})


def test_cli_token_flag_and_config_section():
    from streamcap.cli import _overrides, build_parser
    from streamcap.runtime.config import load_config
    from streamcap.runtime.service import access_policy

    args = build_parser().parse_args(["run", "--token", "view=abcdefgh1", "--token", "admin=abcdefgh2"])
    cfg = load_config(None, environ={}, overrides=_overrides(args))
    policy = access_policy(cfg.auth)
    assert policy.check(Scope.VIEW, "abcdefgh1").allowed
    assert policy.check(Scope.ADMIN, "abcdefgh2").allowed
    assert not policy.check(Scope.PUBLISH, "abcdefgh1").allowed
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--token", "root=abcdefgh1"])


@pytest.mark.parametrize("sample", ["change-me-admin-token", "change-me-publish-token", "CHANGE-ME-anything",
                                    "changeme-123456"])
def test_a_sample_token_is_refused_without_quoting_it(sample):
    with pytest.raises(ValueError) as refused:
        AccessPolicy({sample: Scope.ADMIN})
    assert "sample" in str(refused.value) and sample not in str(refused.value)


def test_public_switches_are_off_unless_set():
    assert not AccessPolicy(TOKENS).is_open("public_status")
    assert AccessPolicy(TOKENS, public_metrics=True).is_open("public_metrics")
    assert not AccessPolicy(TOKENS, public_metrics=True).is_open("tokens")  # only the two switches


def test_a_token_read_from_a_file_works_and_no_token_shows_in_a_printed_config(tmp_path):
    from streamcap.runtime.config import load_config

    (tmp_path / "admin.token").write_text("file-token-4f2a9\n")
    cfg = load_config(None, environ={}, overrides={"auth": {"tokens": [
        {"scope": "admin", "token_file": str(tmp_path / "admin.token")},
        {"scope": "view", "token": "inline-token-77c1"}]}})
    assert [t.token for t in cfg.auth.tokens] == ["file-token-4f2a9", "inline-token-77c1"]
    assert "file-token-4f2a9" not in repr(cfg) and "inline-token-77c1" not in str(cfg)
