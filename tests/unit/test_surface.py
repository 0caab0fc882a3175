"""The public surface is a contract: users import these names."""

import corral
import corral.errors as errors

EXPECTED = {
    "Agent",
    "App",
    "ChatModel",
    "ChatResponse",
    "Context",
    "CorralError",
    "Limits",
    "LimitExceeded",
    "Message",
    "NonDeterminismError",
    "RunCancelled",
    "RunResult",
    "RunStatus",
    "Settings",
    "SimModel",
    "SimReply",
    "StepError",
    "StepTimeout",
    "Tool",
    "UserError",
    "agent",
    "tool",
}


def test_all_lists_the_public_names_and_each_imports():
    assert set(corral.__all__) == EXPECTED
    for name in corral.__all__:
        assert getattr(corral, name) is not None


def test_run_interrupts_cannot_be_swallowed_by_except_exception():
    for cls in (errors.RunCancelled, errors.LimitExceeded, errors.NonDeterminismError, errors.LeaseLost):
        assert issubclass(cls, BaseException)
        assert not issubclass(cls, Exception), cls


def test_catchable_errors_share_one_root():
    for cls in (
        errors.UserError,
        errors.StepError,
        errors.StepTimeout,
        errors.StoreError,
        errors.ProviderError,
        errors.RunNotFound,
        errors.SessionNotFound,
        errors.ToolNotAllowed,
    ):
        assert issubclass(cls, errors.CorralError)


def test_nondeterminism_error_names_the_step_and_both_versions():
    err = errors.NonDeterminismError(
        "3",
        {"kind": "step", "name": "fetch", "input_hash": "aa"},
        {"kind": "step", "name": "fetch_v2", "input_hash": "aa"},
    )
    text = str(err)
    assert "#3" in text and "fetch" in text and "fetch_v2" in text and "name" in text
    assert err.step == "#3 step:fetch_v2"


def test_limit_exceeded_carries_limit_and_step():
    err = errors.LimitExceeded("max_steps", step="#51 step:loop", detail="max_steps=50")
    assert err.limit == "max_steps" and err.step == "#51 step:loop"
    assert "max_steps" in str(err) and "#51" in str(err)
