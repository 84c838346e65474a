"""./dev stack's admin key: the well-known development key only on this machine; served to the
network (--lan) with no key given, a fresh random one (anyone on the farm's Wi-Fi could otherwise
create farms and issue keys to any farm's data)."""

from __future__ import annotations

from devtools.stack.__main__ import DEV_ADMIN_KEY, admin_key


def test_the_lan_gets_a_fresh_admin_key() -> None:
    assert admin_key(None, lan=False) == DEV_ADMIN_KEY  # this machine: the README's key
    a, b = admin_key(None, lan=True), admin_key(None, lan=True)
    assert a != DEV_ADMIN_KEY and a != b and len(a) >= 24
    assert admin_key("my-own-key", lan=True) == "my-own-key"  # an operator's own key stays
