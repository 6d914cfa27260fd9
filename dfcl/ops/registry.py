"""The MLflow model registry, in one place: which version an alias points at, every move of
the `challenger` and `champion` aliases (promote as a compare-and-set, reject, roll back), the
tags that say who, when and why, and the aliases' history with its repair after a crash.

Only "this model does not exist" means there is nothing: any other error (the server is down,
the database is locked) raises, so a transient failure never reads as "no champion yet" and
lets a challenger through unchecked.

Over 300 lines: the alias's moves, their history and its repair share one lock and one
numbering of events, and are read together."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from dfcl.ops.guards import OpsError, exclusive_flock, now


def _registered_model(client: MlflowClient, registered_model: str):
    """The RegisteredModel, or None when no version was ever registered under that name."""
    try:
        return client.get_registered_model(registered_model)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def alias_version(registered_model: str, alias: str = "champion"):
    """The ModelVersion `alias` points at, or None (no such model or alias yet)."""
    client = MlflowClient()
    model = _registered_model(client, registered_model)
    # MLflow says INVALID_PARAMETER_VALUE for a missing alias, as for a malformed request, so
    # the aliases are read instead of asked for one by one.
    if model is None or alias not in model.aliases:
        return None
    return client.get_model_version(registered_model, model.aliases[alias])


def champion_version(registered_model: str):
    return alias_version(registered_model, "champion")


def registered_methods(registered_model: str) -> list[str] | None:
    """The methods of the newest fully registered version (its `methods` tag is written after
    the model is logged), or None when there is none."""
    client = MlflowClient()
    if _registered_model(client, registered_model) is None:
        return None
    versions = client.search_model_versions(f"name='{registered_model}'", order_by=["version_number DESC"])
    for v in versions:
        if v.tags.get("methods"):
            return v.tags["methods"].split(",")
    return None

# -- tags -------------------------------------------------------------------------------

def tag_challenger(registered_model: str, version: str, summaries: dict[str, float], methods: list[str]) -> None:
    """A newly registered version's summaries and methods as tags; `challenger` points at it."""
    client = MlflowClient()
    for key, value in summaries.items():
        client.set_model_version_tag(registered_model, version, key, f"{value:.4f}")
    client.set_model_version_tag(registered_model, version, "methods", ",".join(methods))
    client.set_registered_model_alias(registered_model, "challenger", version)


def tag_decision(registered_model: str, version: str, tags: dict[str, str]) -> None:
    """The same who/when/why tags on the model version and on the active run."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, value)
        mlflow.set_tag(key, value)


# -- alias history ----------------------------------------------------------------------
# MLflow keeps only where an alias points now, not where it pointed before; rollback and
# `dfcl history` need the sequence, so every move is also written as a registered-model tag
# `alias_event.<n>` (a JSON record), which any MLflow client can read. MLflow has no
# compare-and-set, so a move, the look at where the alias points and the event's number are one
# step under a flock of the workspace (data/alias.lock): a promotion and a rollback at the same
# moment get events n and n+1, and neither moves the alias from under the other.

EVENT_PREFIX = "alias_event."
ALIAS_LOCK_WAIT_S = 60  # each holder makes a few registry calls; longer means a hung one


@contextmanager
def alias_lock(root: Path | None = None, wait_s: float = ALIAS_LOCK_WAIT_S):
    """Moves of the aliases and their history, one at a time per workspace. Not the retraining
    lock: a run holds that while it waits (up to a day) for ops, and rollback must not wait."""
    from dfcl.workspace import Workspace

    path = (root or Workspace.here().root) / "data" / "alias.lock"
    with exclusive_flock(path, wait_s, lambda: f"another promotion, rejection or rollback has held {path} for "
                         f"over {wait_s:.0f} s; try again", poll_s=0.05):
        yield


def alias_events(registered_model: str) -> list[dict]:
    tags = MlflowClient().get_registered_model(registered_model).tags
    events = [json.loads(v) for k, v in tags.items() if k.startswith(EVENT_PREFIX)]
    return sorted(events, key=lambda e: e["n"])


def alias_history(registered_model: str) -> tuple[dict[str, str], list[dict]]:
    """Where each alias of the model points now, and every recorded move (alias_events)."""
    model = _registered_model(MlflowClient(), registered_model)
    if model is None:
        raise OpsError(f"no registered model {registered_model!r} yet: nothing has been trained here")
    return model.aliases, alias_events(registered_model)


def _record(registered_model: str, action: str, version: str | None, by: str, reason: str,
            previous: str | None = None) -> dict:
    """Write the next event (caller holds alias_lock). Any error reading the history raises:
    numbering from a history that failed to load would overwrite event 1."""
    client = MlflowClient()
    tags = client.get_registered_model(registered_model).tags
    numbers = [int(k[len(EVENT_PREFIX):]) for k in tags if k.startswith(EVENT_PREFIX) and k[len(EVENT_PREFIX):].isdigit()]
    n = max(numbers, default=0) + 1  # not len + 1: a deleted event would make it reuse a number
    key = f"{EVENT_PREFIX}{n:05d}"
    if key in tags:  # by construction impossible; the guard is what "never overwrite" rests on
        raise OpsError(f"{registered_model}: event {key} exists already; not overwriting it")
    event = {"n": n, "at": now(), "action": action, "version": version, "previous": previous, "by": by,
             "reason": reason}
    client.set_registered_model_tag(registered_model, key, json.dumps(event))
    return event


class StaleDecision(OpsError):
    """The champion moved (a rollback, another promotion) after the gate compared against it."""


def promote(registered_model: str, version: str, by: str, reason: str, scored: str | None) -> dict:
    """Point `champion` at `version` and record it, with the version it replaced: a
    compare-and-set against `scored`, the champion the gate compared the challenger with (None:
    there was none). A run waits up to a day for ops; a rollback in that wait would otherwise let
    the approval replace a version the challenger was never compared with."""
    with alias_lock():
        before = champion_version(registered_model)
        now_points = str(before.version) if before else None
        if now_points != (str(scored) if scored is not None else None):
            raise StaleDecision(
                f"stale decision, re-run the gate: the gate compared version {version} with "
                f"{f'champion version {scored}' if scored else 'no champion'}, but champion is now "
                f"{f'version {now_points}' if now_points else 'unset'}; nothing moved")
        MlflowClient().set_registered_model_alias(registered_model, "champion", version)
        return _record(registered_model, "promote", version, by, reason, previous=now_points)


def record_rejection(registered_model: str, version: str, by: str, reason: str) -> dict:
    with alias_lock():
        return _record(registered_model, "reject", version, by, reason)


def champion_stack(events: list[dict]) -> list[str]:
    """The champions in order, as promotions push and rollbacks pop them."""
    stack: list[str] = []
    for e in events:
        if e["action"] == "promote":
            stack.append(e["version"])
        elif e["action"] == "rollback" and stack:
            stack.pop()
    return stack


def rollback_champion(registered_model: str, by: str, reason: str) -> tuple[str, str]:
    """Point `champion` back at the version that held it before the current one. Refused when the
    alias does not point where the history says (moved by hand, or by another tool): which
    "previous" was meant is then unknown."""
    with alias_lock():
        stack = champion_stack(alias_events(registered_model))
        if len(stack) < 2:
            raise OpsError(f"{registered_model}: no earlier champion to roll back to "
                           f"(champions so far: {stack or 'none'})")
        current, previous = stack[-1], stack[-2]
        points = champion_version(registered_model)
        if points is None or str(points.version) != current:
            raise OpsError(f"{registered_model}: champion points at {f'version {points.version}' if points else 'nothing'}, "
                           f"but its history's last champion is version {current}: the alias was moved outside dfcl, or a move was "
                           f"interrupted. Record where it points with `dfcl repair`, or point it back at version {current}, "
                           "before rolling back")
        client = MlflowClient()
        client.set_registered_model_alias(registered_model, "champion", previous)
        client.set_model_version_tag(registered_model, current, "rolled_back_at", now())
        client.set_model_version_tag(registered_model, current, "rolled_back_by", by)
        client.set_model_version_tag(registered_model, current, "rollback_reason", reason)
        _record(registered_model, "rollback", previous, by, reason, previous=current)
    return current, previous


# -- interrupted moves -------------------------------------------------------------------
# A move is three writes to the registry (the alias, the history event, the version's tags),
# and a kill can fall between them. The history is then told apart from the alias: `dfcl
# history` says what disagrees, and `dfcl repair` completes the move the alias shows.

def inconsistencies(registered_model: str) -> list[str]:
    """What an interrupted promotion or rollback left behind, one line each; [] when none."""
    aliases, events = alias_history(registered_model)
    stack, points, found = champion_stack(events), aliases.get("champion"), []
    points = str(points) if points is not None else None
    last = stack[-1] if stack else None
    if points != last:
        found.append(f"champion points at {f'version {points}' if points else 'nothing'}, but the history's last "
                     f"champion is {f'version {last}' if last else 'none'}: a promotion or rollback was interrupted "
                     "(or the alias moved outside dfcl); `dfcl repair` records the move the alias shows")
    client = MlflowClient()
    moves = [e for e in events if e["action"] in ("promote", "rollback")]
    if moves:
        e = moves[-1]
        version, tag = (e["version"], "promoted_by") if e["action"] == "promote" else (e["previous"], "rolled_back_by")
        if version and tag not in client.get_model_version(registered_model, version).tags:
            found.append(f"event {e['n']} ({e['action']} by {e['by']}) has no {tag} tag on version {version}: "
                         "interrupted before its tags; `dfcl repair` writes them")
    return found


def repair(registered_model: str, by: str) -> list[str]:
    """Make the history and the tags agree with where `champion` points (the move that was under
    way when a process died): the missing event (a rollback when the alias is on the champion
    before the history's last, else a promotion), then the missing tags. Returns what it did."""
    done, client = [], MlflowClient()
    with alias_lock():
        aliases, events = alias_history(registered_model)
        stack, points = champion_stack(events), aliases.get("champion")
        points = str(points) if points is not None else None
        last = stack[-1] if stack else None
        if points is not None and points != last:
            action = "rollback" if len(stack) >= 2 and stack[-2] == points else "promote"
            _record(registered_model, action, points, by, "recorded by dfcl repair: the alias had moved, its event was "
                    "missing", previous=last)
            done.append(f"recorded the {action} to version {points} (from {f'version {last}' if last else 'none'})")
        moves = [e for e in alias_events(registered_model) if e["action"] in ("promote", "rollback")]
        if moves:
            e = moves[-1]
            if e["action"] == "promote":
                version, tags = e["version"], {"promoted_by": e["by"], "promoted_at": e["at"],
                                               "promotion_reason": e["reason"]}
            else:
                version, tags = e["previous"], {"rolled_back_by": e["by"], "rolled_back_at": e["at"],
                                                "rollback_reason": e["reason"]}
            have = client.get_model_version(registered_model, version).tags if version else {}
            missing = {k: v for k, v in tags.items() if k not in have}
            for key, value in missing.items():
                client.set_model_version_tag(registered_model, version, key, value)
            if missing:
                done.append(f"tagged version {version} with {', '.join(missing)} from event {e['n']}")
    return done
