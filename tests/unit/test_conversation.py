"""Conversation state: what enters history, what is sent, what is kept for retry."""
from __future__ import annotations

import threading
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opchat_magic.history import (
    Conversation,
    EmptyMessageError,
    HistoryNotSavedWarning,
    Message,
    Thread,
    Turn,
    TurnStateError,
    UnknownThreadError,
)
from opchat_magic.errors import OpchatError, ThreadBusyError
from opchat_magic.history.store import Store


def chat(thread: Thread, user: str, reply: str) -> Turn:
    turn = thread.begin(user)
    thread.commit(turn, reply)
    return turn


def roles(messages):
    return [m["role"] for m in messages]


# -- a turn's life -------------------------------------------------------------
def test_turn_enters_history_only_when_its_reply_completes():
    thread = Thread("t")
    turn = thread.begin("hello", provider="p", model="m")
    assert turn.status == "pending" and thread.pending is turn
    assert thread.messages == []
    assert thread.turns == []
    assert thread.request_messages(turn) == [{"role": "user", "content": "hello"}]

    assert thread.commit(turn, "hi there", usage={"total_tokens": 7}) is True
    assert turn.status == "complete" and turn.finished_at >= turn.started_at
    assert turn.usage == {"total_tokens": 7}
    assert thread.pending is None
    assert thread.messages == [Message("user", "hello"), Message("assistant", "hi there")]
    assert [t.id for t in thread.turns] == [turn.id]


def test_messages_are_a_copy():
    thread = Thread("t")
    chat(thread, "a", "b")
    got = thread.messages
    got.clear()
    assert len(thread.messages) == 2
    # the turn a caller holds is not the one in history: editing it changes nothing
    turn = thread.turns[0]
    turn.reply = "edited"
    assert thread.messages[1].content == "b"


def test_failed_turn_is_kept_out_of_history_but_visible_and_retryable():
    thread = Thread("t")
    chat(thread, "q1", "a1")
    turn = thread.begin("q2")
    assert thread.fail(turn, "HTTP 500 from http://x: boom", partial="half an ans") is True
    assert turn.status == "failed" and turn.retryable
    assert thread.pending is None
    assert thread.messages == [Message("user", "q1"), Message("assistant", "a1")]

    failed = thread.last_failed
    assert failed.id == turn.id and failed.reply == "half an ans" and failed.error.startswith("HTTP 500")
    assert [t.status for t in thread.turns] == ["complete", "failed"]

    nxt = thread.begin("q3")
    sent = thread.request_messages(nxt)
    assert [m["content"] for m in sent] == ["q1", "a1", "q3"]  # q2 and its partial reply are not sent


def test_stopped_turn_keeps_its_partial_text_and_is_marked():
    thread = Thread("t")
    turn = thread.begin("write a poem")
    thread.fail(turn, "stopped by the user", partial="Roses are", stopped=True)
    assert thread.last_failed.status == "stopped" and thread.last_failed.retryable
    assert thread.last_failed.reply == "Roses are"
    assert thread.messages == []
    text = thread.to_markdown()
    assert "Roses are" in text and "stopped" in text and "retried" in text


def test_failed_turn_shows_where_it_happened():
    thread = Thread("t")
    chat(thread, "q1", "a1")
    chat(thread, "q2", "a2")
    thread.fail(thread.begin("q3"), "boom")
    assert [t.user for t in thread.turns] == ["q1", "q2", "q3"]
    assert [t.status for t in thread.turns] == ["complete", "complete", "failed"]


def test_a_later_completed_turn_supersedes_the_failed_one():
    """Retry semantics: retrying q2 after q3 was answered would append q2 after a3, out of order."""
    thread = Thread("t")
    chat(thread, "q1", "a1")
    thread.fail(thread.begin("q2"), "boom")
    chat(thread, "q3", "a3")  # a different question, answered: the failure is superseded
    assert thread.last_failed is None and thread.retry() is None
    assert [t.user for t in thread.turns] == ["q1", "q3"]
    assert [m.content for m in thread.messages] == ["q1", "a1", "q3", "a3"]


def test_retry_flow():
    thread = Thread("t")
    assert thread.retry() is None
    chat(thread, "q1", "a1")
    first = thread.begin("q2", provider="p", model="m")
    thread.fail(first, "timeout")

    again = thread.retry()
    assert again.status == "pending" and again.id != first.id
    assert again.user == "q2" and again.retry_of == first.id
    assert (again.provider, again.model) == ("p", "m")
    assert [m["content"] for m in thread.request_messages(again)] == ["q1", "a1", "q2"]
    with pytest.raises(ThreadBusyError):
        thread.retry()

    thread.fail(again, "timeout again")  # a failed retry replaces the failed turn
    assert thread.last_failed.id == again.id

    third = thread.retry()
    thread.commit(third, "a2")
    assert thread.last_failed is None
    assert [m.content for m in thread.messages] == ["q1", "a1", "q2", "a2"]
    assert [t.status for t in thread.turns] == ["complete", "complete"]


def test_resending_the_failed_text_through_begin_also_answers_it():
    # The %opchat_retry magic goes through begin(), not retry(): same text, same outcome.
    thread = Thread("t")
    thread.fail(thread.begin("q"), "boom")
    thread.commit(thread.begin("q"), "a")
    assert thread.last_failed is None


def test_one_turn_at_a_time_per_thread():
    conversation = Conversation("nb")
    thread = conversation.thread("work")
    thread.begin("first")
    with pytest.raises(ThreadBusyError) as info:
        thread.begin("second")
    assert "'work'" in str(info.value)
    assert isinstance(info.value, OpchatError)
    other = conversation.thread("other").begin("elsewhere")  # another thread is free
    assert other.status == "pending"


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_message_is_refused_clearly(text):
    thread = Thread("t")
    with pytest.raises(EmptyMessageError, match="empty") as info:
        thread.begin(text)
    assert isinstance(info.value, ValueError) and isinstance(info.value, OpchatError)
    assert thread.pending is None


def test_first_finisher_wins_the_stop_race():
    thread = Thread("t")
    turn = thread.begin("q")
    assert thread.commit(turn, "a") is True
    assert thread.fail(turn, "stopped by the user", stopped=True) is False  # a Stop that came too late
    assert turn.status == "complete" and thread.last_failed is None
    assert thread.commit(turn, "again") is False
    assert len(thread.messages) == 2

    late = thread.begin("q2")
    thread.fail(late, "stopped", stopped=True)
    assert thread.commit(late, "full") is False
    assert thread.messages[-1].content == "a"


def test_turns_from_elsewhere_are_refused():
    one, two = Thread("one"), Thread("two")
    turn = one.begin("q")
    with pytest.raises(TurnStateError, match="'one'"):
        two.commit(turn, "a")
    with pytest.raises(TurnStateError):
        one.commit(Turn(thread="one", user="never begun"), "a")
    one.commit(turn, "a")
    with pytest.raises(TurnStateError, match="ended"):
        one.request_messages(turn)


def test_usage_dataclass_is_kept_as_a_dict():
    from opchat_magic.providers.base import Usage

    thread = Thread("t")
    turn = thread.begin("q")
    thread.commit(turn, "a", usage=Usage(3, 4, 7))
    assert thread.turns[0].usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


# -- what is sent --------------------------------------------------------------
def history_of(pairs):
    thread = Thread("t")
    for user, reply in pairs:
        chat(thread, user, reply)
    return thread


def test_trim_by_messages_keeps_whole_pairs():
    thread = history_of([("u1", "a1"), ("u2", "a2"), ("u3", "a3")])
    turn = thread.begin("new")
    contents = lambda **kw: [m["content"] for m in thread.request_messages(turn, **kw)]  # noqa: E731
    assert contents() == ["u1", "a1", "u2", "a2", "u3", "a3", "new"]
    assert contents(max_messages=5) == ["u2", "a2", "u3", "a3", "new"]
    assert contents(max_messages=4) == ["u3", "a3", "new"]  # never a lone a2 first
    assert contents(max_messages=3) == ["u3", "a3", "new"]
    assert contents(max_messages=1) == ["new"]
    assert contents(max_messages=0) == ["new"]  # the new message is never dropped
    assert contents(include_history=False, max_messages=99) == ["new"]
    assert len(thread.messages) == 6  # trimming touches what is sent, never what is kept


def test_trim_by_chars():
    thread = history_of([("aaaa", "bbbb"), ("cc", "dd")])
    turn = thread.begin("xyz")
    contents = lambda **kw: [m["content"] for m in thread.request_messages(turn, **kw)]  # noqa: E731
    assert contents(max_chars=3 + 4 + 8) == ["aaaa", "bbbb", "cc", "dd", "xyz"]
    assert contents(max_chars=3 + 4 + 7) == ["cc", "dd", "xyz"]
    assert contents(max_chars=3 + 4) == ["cc", "dd", "xyz"]
    assert contents(max_chars=6) == ["xyz"]
    assert contents(max_chars=1) == ["xyz"]  # too long on its own: sent anyway
    assert contents(max_chars=100, max_messages=3) == ["cc", "dd", "xyz"]  # both limits apply


def test_negative_limits_are_refused():
    thread = Thread("t")
    turn = thread.begin("q")
    with pytest.raises(ValueError, match="max_messages"):
        thread.request_messages(turn, max_messages=-1)
    with pytest.raises(ValueError, match="max_chars"):
        thread.request_messages(turn, max_chars=-1)


def test_version_changes_with_every_change_a_watcher_must_see():
    thread = Thread("t")
    seen = [thread.version]

    def changed():
        seen.append(thread.version)
        return seen[-1] != seen[-2]

    turn = thread.begin("q1")
    assert not changed()  # a turn in flight is ``pending``'s business
    thread.commit(turn, "a1")
    assert changed()
    assert thread.commit(turn, "again") is False and not changed()  # a lost race changes nothing
    thread.fail(thread.begin("q2"), "boom")
    assert changed()
    thread.commit(thread.retry(), "a2")  # answers the failed turn: history and last_failed change
    assert changed()
    thread.reset()
    assert changed()


text_st = st.text(alphabet="abc ", min_size=0, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(st.tuples(text_st, text_st), max_size=12),
    new=st.text(alphabet="xyz", min_size=1, max_size=15),
    max_messages=st.none() | st.integers(0, 30),
    max_chars=st.none() | st.integers(0, 200),
    system=st.none() | st.text(alphabet="s", min_size=1, max_size=50),
)
def test_trimmed_request_is_a_suffix_of_whole_pairs(pairs, new, max_messages, max_chars, system):
    thread = Thread("t", system=system)
    for user, reply in pairs:
        chat(thread, user if user.strip() else ".", reply)
    turn = thread.begin(new)
    sent = thread.request_messages(turn, max_messages=max_messages, max_chars=max_chars)

    if system:
        assert sent[0] == {"role": "system", "content": system}
        sent = sent[1:]
    assert sent[-1] == {"role": "user", "content": new}
    body = sent[:-1]
    history = [m.to_dict() for m in thread.messages]
    # a suffix of the history, made of whole user/assistant pairs
    assert len(body) % 2 == 0
    assert body == history[len(history) - len(body):]
    assert roles(body) == ["user", "assistant"] * (len(body) // 2)
    # within the limits, unless only the new message is left
    if len(sent) > 1:
        assert max_messages is None or len(sent) <= max_messages
        assert max_chars is None or sum(len(m["content"]) for m in sent) <= max_chars
    # and as long as the limits allow: one more pair would break one of them
    if len(body) < len(history):
        longer = history[len(history) - len(body) - 2:] + [sent[-1]]
        over_count = max_messages is not None and len(longer) > max_messages
        over_chars = max_chars is not None and sum(len(m["content"]) for m in longer) > max_chars
        assert over_count or over_chars


def test_system_prompt_placement():
    thread = history_of([("u1", "a1")])
    thread.system = "Be brief."
    turn = thread.begin("q")
    sent = thread.request_messages(turn)
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert roles(sent) == ["system", "user", "assistant", "user"]
    assert thread.request_messages(turn, system="Be verbose.")[0]["content"] == "Be verbose."
    assert roles(thread.request_messages(turn, system="")) == ["user", "assistant", "user"]
    # the system prompt is not counted against the limits, and is never trimmed
    sent = thread.request_messages(turn, max_messages=1, max_chars=1)
    assert sent == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]
    assert thread.messages[0].role == "user"  # nor is it stored as history


def test_preview_with_text_starts_no_turn():
    thread = history_of([("u1", "a1")])
    assert [m["content"] for m in thread.request_messages("peek")] == ["u1", "a1", "peek"]
    assert thread.pending is None


# -- reset ---------------------------------------------------------------------
def test_reset_clears_history_and_failed_turn():
    thread = history_of([("u1", "a1")])
    thread.fail(thread.begin("u2"), "boom")
    thread.reset()
    assert thread.messages == [] and thread.last_failed is None and thread.turns == []
    assert thread.retry() is None


def test_reset_while_streaming_lets_the_turn_commit_into_the_fresh_history():
    thread = history_of([("u1", "a1")])
    turn = thread.begin("u2")
    thread.reset()
    assert thread.pending is turn
    thread.commit(turn, "a2")
    assert thread.messages == [Message("user", "u2"), Message("assistant", "a2")]


def test_conversation_reset_one_and_all():
    conversation = Conversation("nb")
    chat(conversation.thread(), "d", "d")
    chat(conversation.thread("x"), "x", "x")
    conversation.reset("x")
    assert conversation.thread("x").messages == [] and len(conversation.thread().messages) == 2
    conversation.reset()  # the default thread
    assert conversation.thread().messages == []
    chat(conversation.thread(), "d", "d")
    chat(conversation.thread("x"), "x", "x")
    conversation.reset_all()
    assert all(conversation.thread(n).messages == [] for n in conversation.threads())
    assert conversation.threads() == ["default", "x"]  # the threads remain, empty
    with pytest.raises(KeyError):
        conversation.reset("nope")


# -- threads -------------------------------------------------------------------
def test_threads_are_isolated():
    conversation = Conversation("nb")
    a, b = conversation.thread("a"), conversation.thread("b")
    chat(a, "to a", "from a")
    b.system = "b's prompt"
    assert b.messages == [] and a.system is None
    turn = b.begin("to b")
    assert [m["content"] for m in b.request_messages(turn)] == ["b's prompt", "to b"]
    assert conversation.thread("a") is a  # the same object every time


def test_unknown_thread_lists_the_known_ones():
    conversation = Conversation("nb")
    conversation.thread("research")
    with pytest.raises(UnknownThreadError) as info:
        conversation.thread("reserch", create=False)
    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert "'reserch'" in message and "'default'" in message and "'research'" in message
    assert not message.startswith('"')  # no KeyError quoting
    assert "reserch" not in conversation


def test_default_thread():
    conversation = Conversation("nb")
    assert conversation.threads() == ["default"]
    assert conversation.thread().name == "default"
    conversation.default_thread = "work"
    assert conversation.thread().name == "work"
    assert conversation.threads() == ["default", "work"]
    with pytest.raises(ValueError):
        conversation.thread("  ")


def test_markdown_and_json_export():
    thread = history_of([("What is 2+2?", "4")])
    thread.system = "Be exact."
    thread.fail(thread.begin("And 3+3?"), "HTTP 502 from http://x: bad gateway", partial="6 or")
    text = thread.to_markdown()
    assert text.index("**System:**") < text.index("**You:**\n\nWhat is 2+2?") < text.index("**Assistant:**\n\n4")
    assert "failed: HTTP 502" in text and "6 or" in text
    data = thread.to_json()
    assert data["name"] == "t" and data["system"] == "Be exact."
    assert data["chat_id"] == thread.chat_id  # finds the discussion on an AI Engine site
    assert data["messages"] == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    assert data["last_failed"]["user"] == "And 3+3?" and data["last_failed"]["status"] == "failed"
    import json

    json.dumps(data)  # exportable as is
    assert Thread("empty").to_markdown() == ""


# -- with a store ---------------------------------------------------------------
def test_conversation_survives_a_restart(tmp_path):
    path = tmp_path / "history.sqlite3"
    with Store(path) as store:
        conversation = Conversation("nb", store=store)
        chat(conversation.thread(), "u1", "a1")
        work = conversation.thread("work")
        turn = work.begin("w1", provider="opchatgpts", model="gpt")
        work.commit(turn, "r1", usage={"total_tokens": 5})
        work.fail(work.begin("w2"), "boom", partial="par", stopped=True)
        assert conversation.flush(10)  # writes are queued to the writer thread

    with Store(path) as store:
        restored = Conversation("nb", store=store)
        assert restored.threads() == ["default", "work"]
        assert restored.thread().messages == [Message("user", "u1"), Message("assistant", "a1")]
        work = restored.thread("work")
        first = work.turns[0]
        assert (first.id, first.provider, first.model, first.usage) == (turn.id, "opchatgpts", "gpt",
                                                                         {"total_tokens": 5})
        failed = work.last_failed
        assert (failed.user, failed.reply, failed.status) == ("w2", "par", "stopped")
        assert [t.status for t in work.turns] == ["complete", "stopped"]
        again = work.retry()
        assert [m["content"] for m in work.request_messages(again)] == ["w1", "r1", "w2"]
        work.commit(again, "r2")
        assert restored.flush(10)

    with Store(path) as store:
        restored = Conversation("nb", store=store)
        assert restored.thread("work").last_failed is None
        assert len(restored.thread("work").messages) == 4
        assert Conversation("other", store=store).threads() == ["default"]  # another notebook
        store.reset("nb", "default")
        assert Conversation("nb", store=store).threads() == ["default", "work"]  # default first, always
        assert Conversation("nb", store=store, restore=False).thread().messages == []


def test_reset_reaches_the_store(tmp_path):
    with Store(tmp_path / "h.db") as store:
        conversation = Conversation("nb", store=store)
        chat(conversation.thread(), "u", "a")
        chat(conversation.thread("x"), "u", "a")
        conversation.reset("x")
        assert conversation.flush(10)
        assert set(store.load("nb")) == {"default"}
        conversation.reset_all()
        assert conversation.flush(10)
        assert store.load("nb") == {}


class BrokenStore:
    path = "/nowhere/history.sqlite3"

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise OSError("disk full")
        return fail


def test_a_failing_store_warns_and_keeps_the_session_history():
    with pytest.warns(HistoryNotSavedWarning, match="restore"):  # a broken store is a warning, not an error
        conversation = Conversation("nb", store=BrokenStore())
    thread = conversation.thread()
    turn = thread.begin("q")
    with pytest.warns(HistoryNotSavedWarning, match="disk full"):
        thread.commit(turn, "a")
        assert conversation.flush(10)  # the writer thread reports it
    assert thread.messages == [Message("user", "q"), Message("assistant", "a")]
    assert thread.pending is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HistoryNotSavedWarning)
        thread.fail(thread.begin("q2"), "boom")
        assert conversation.flush(10)  # the writer's warning comes inside this block
    assert thread.last_failed.user == "q2"


# -- threads of execution ---------------------------------------------------------
def test_concurrent_commits_on_two_threads_lose_nothing(tmp_path):
    with Store(tmp_path / "h.db") as store:
        conversation = Conversation("nb", store=store)
        start = threading.Barrier(2)
        errors = []

        def work(name):
            try:
                thread = conversation.thread(name)
                start.wait()
                for i in range(200):
                    turn = thread.begin(f"{name} q{i}")
                    thread.request_messages(turn, max_messages=5)
                    thread.commit(turn, f"{name} a{i}")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(n,)) for n in ("panel", "cells")]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
        assert errors == []
        assert conversation.flush(30)
        for name in ("panel", "cells"):
            expected = [c for i in range(200) for c in (f"{name} q{i}", f"{name} a{i}")]
            assert [m.content for m in conversation.thread(name).messages] == expected
            assert [m.content for m in store.load("nb")[name]] == expected


def test_racing_on_one_thread_keeps_history_in_order():
    thread = Thread("shared")
    done = {"a": 0, "b": 0}
    busy = {"a": 0, "b": 0}

    def work(me):
        while done[me] < 100:
            try:
                turn = thread.begin(f"{me}{done[me]}")
            except ThreadBusyError:
                busy[me] += 1
                continue
            thread.commit(turn, f"reply to {turn.user}")
            done[me] += 1

    workers = [threading.Thread(target=work, args=(n,)) for n in "ab"]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    messages = thread.messages
    assert len(messages) == 400
    for user, reply in zip(messages[::2], messages[1::2]):
        assert user.role == "user" and reply.role == "assistant"
        assert reply.content == f"reply to {user.content}"
    for me in "ab":
        mine = [m.content for m in messages[::2] if m.content.startswith(me)]
        assert mine == [f"{me}{i}" for i in range(100)]


# -- one server-side conversation id per thread (AI Engine's chatId) ------------------
def test_each_thread_has_its_own_chat_id_and_a_reset_starts_a_new_one():
    import re

    conversation = Conversation("nb")
    main, work = conversation.thread(), conversation.thread("work")
    assert re.fullmatch(r"[a-z0-9]{10}", main.chat_id) and main.chat_id != work.chat_id
    first = main.begin("u1")
    assert first.chat_id == main.chat_id
    main.commit(first, "a1")
    failed = main.begin("u2")
    main.fail(failed, "boom")
    again = main.retry()
    assert again.chat_id == first.chat_id  # the same conversation, turn after turn
    main.commit(again, "a2")
    before = main.chat_id
    conversation.reset()
    assert main.chat_id != before and re.fullmatch(r"[a-z0-9]{10}", main.chat_id)
    assert work.chat_id != before
    ids = {conversation.thread(n).chat_id for n in conversation.threads()}
    conversation.reset_all()
    assert not ids & {conversation.thread(n).chat_id for n in conversation.threads()}


def test_chat_id_survives_a_restart(tmp_path):
    path = tmp_path / "history.sqlite3"
    with Store(path) as store:
        conversation = Conversation("nb", store=store)
        thread = conversation.thread()
        chat(thread, "u1", "a1")
        kept = thread.chat_id
        work = conversation.thread("work")
        work.fail(work.begin("w1"), "boom")  # only a failed turn: its id is the thread's
        work_id = work.chat_id
        fresh = conversation.thread("fresh")  # no turn: nothing to continue
        assert conversation.flush(10)
    with Store(path) as store:
        restored = Conversation("nb", store=store)
        assert restored.thread().chat_id == kept
        assert restored.thread("work").chat_id == work_id
        assert restored.thread().turns[0].chat_id == kept
        restored.reset()
        new = restored.thread().chat_id
        chat(restored.thread(), "u2", "a2")
        assert restored.flush(10)
    with Store(path) as store:
        assert Conversation("nb", store=store).thread().chat_id == new != kept
