from streamcap.core.reconcile import Plan, fingerprint, plan


def test_plan_starts_missing_stops_unwanted_replaces_changed_and_leaves_unknown_alone():
    wanted = {"a": "1", "b": "2", "c": "3"}
    running = {"b": "2", "c": "old", "d": "4", "e": None}
    assert plan(wanted, running) == Plan(start=("a",), stop=("d", "e"), replace=("c",))


def test_unknown_fingerprint_is_not_replaced_and_nothing_to_do_is_empty():
    assert plan({"a": "1"}, {"a": None}).empty
    assert plan({"a": "1"}, {"a": "1"}).empty


def test_starts_are_limited_per_round_in_id_order():
    todo = plan({f"s{i}": "x" for i in range(5)} | {"r": "new"}, {"r": "old"}, max_starts=3)
    assert todo.replace == ("r",) and todo.start == ("s0", "s1")


def test_fingerprint_is_stable_and_sensitive():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
