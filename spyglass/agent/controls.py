"""The control ops the API hands to the agent: watch, verdict, sweep and intercept.

``ControlOps`` is a mixin of ``Agent`` (runner.py). The API's worker threads queue each op for
the capture thread (``_call``), which runs them between batches (``_run_commands``): it owns the
pipeline, the watch list, the capture filter and the store's writer. An op runs exactly when its
caller is told it did: one the capture thread has not taken up in time is cancelled, never run.
Intercept mode's start, the devices chosen through the API and the saved "watch" and "intercept"
settings live here too.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from spyglass.agent.watch import WatchSet
from spyglass.core.pipeline import Pipeline
from spyglass.store.db import Store, StoreError

if TYPE_CHECKING:
    from spyglass.agent.runner import AgentConfig
    from spyglass.capture.intercept import Interceptor

log = logging.getLogger("spyglass.agent")

# How long an op may wait for the capture thread to take it up (it is cancelled after that).
# Once taken up it runs to the end: choosing a device learns its MAC (0.6 s) and, for the first
# one, starts the restore watchdog (up to 10 s on a loaded machine). Pick-up plus run stays under
# the 30 s `spyglass intercept` waits for the answer.
CONTROL_TIMEOUT_S = 5.0
INTERCEPT_TIMEOUT_S = 10.0
INTERCEPT_SETTING = "intercept"  # the devices chosen through the API: a JSON list of IPs
WATCH_SETTING = "watch"  # the devices the user added: a JSON list of MACs


def default_router(ifname: str) -> str | None:
    """The IPv4 default gateway reached through ``ifname``, from ``ip -j route``."""
    import subprocess

    out = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "default", "dev", ifname],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        routes = json.loads(out.stdout or "[]")
    except ValueError:
        return None
    for r in routes:
        if r.get("gateway"):
            return str(r["gateway"])
    return None


def _sorted_ips(ips: Any) -> list[str]:
    return sorted(ips, key=lambda ip: int(ipaddress.IPv4Address(ip)))


def _stored_choice(store: Store) -> list[str]:
    """The devices chosen for interception through the API (unreadable entries are skipped)."""
    try:
        value = json.loads(store.get_setting(INTERCEPT_SETTING, "[]") or "[]")
    except ValueError:
        value = []
    chosen: list[str] = []
    for ip in value if isinstance(value, list) else []:
        try:
            chosen.append(str(ipaddress.IPv4Address(ip)))
        except ValueError:
            log.warning("ignoring %r in the saved intercept choice: not an IPv4 address", ip)
    return list(dict.fromkeys(chosen))


class Command:
    """One control op on its way to the capture thread. It runs at most once, and only if its
    caller still waits: ``take`` (capture thread) and ``cancel`` (caller) race under one lock,
    so exactly one of them wins."""

    __slots__ = ("fn", "ok", "value", "done", "_lock", "_state")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.ok = False
        self.value: Any = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._state = "queued"  # -> "taken" (it runs) or "cancelled" (it never will)

    def take(self) -> bool:
        return self._leave_queue("taken")

    def cancel(self) -> bool:
        return self._leave_queue("cancelled")

    def _leave_queue(self, state: str) -> bool:
        """Move from "queued" to ``state``; False if the other side got there first."""
        with self._lock:
            if self._state != "queued":
                return False
            self._state = state
            return True

    def finish(self, ok: bool, value: Any) -> None:
        self.ok, self.value = ok, value
        self.done.set()


def set_verdict(store: Store, prm: dict[str, Any]) -> dict[str, Any]:
    store.set_verdict(prm["upload"], prm["verdict"])
    return {"upload": prm["upload"], "verdict": prm["verdict"]}


class ControlOps:
    """The agent's control ops and intercept state; ``Agent.__init__`` sets the attributes."""

    cfg: AgentConfig
    # Work the API's worker threads hand to the capture thread.
    _commands: queue.Queue[Command]
    _icpt: Interceptor | None
    _chosen: list[str]
    _narrowed: bool

    if TYPE_CHECKING:  # status, problems and the capture filter: Agent's (runner.py)

        def _set(self, **kv: Any) -> None: ...
        def _problem(self, kind: str, message: str) -> None: ...
        def _clear_problem(self, kind: str) -> None: ...
        def _apply_filter(self, cap: Any, watch: WatchSet) -> None: ...

    # -- control ops (API worker threads → capture thread) --------------------------------
    def _call(self, fn: Callable[[], Any], timeout_s: float = CONTROL_TIMEOUT_S) -> Any:
        """Run ``fn`` on the capture thread and return its result. When the capture thread
        does not take it up within ``timeout_s`` (the interface is gone, the store is slow),
        the op is cancelled and TimeoutError says nothing was done; once taken up, the caller
        waits for its outcome, whatever the time, as the op will happen."""
        cmd = Command(fn)
        self._commands.put(cmd)
        if not cmd.done.wait(timeout_s):
            if cmd.cancel():
                raise TimeoutError(
                    f"the agent's capture loop did not take the request within {timeout_s:g} s;"
                    " nothing was changed, try again"
                )
            cmd.done.wait()
        if not cmd.ok:
            raise cmd.value
        return cmd.value

    def _queued(self) -> Iterator[Command]:
        """The commands waiting now, taken off the queue one by one."""
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            yield cmd

    def _run_commands(self) -> None:
        for cmd in self._queued():
            if not cmd.take():
                continue  # its caller gave up on it and was told nothing was done
            try:
                cmd.finish(True, cmd.fn())
            except KeyError as e:  # an unknown upload id
                cmd.finish(False, ValueError(str(e).strip("'\"")))
            except (ValueError, StoreError) as e:
                cmd.finish(False, ValueError(str(e)))
            except Exception as e:  # noqa: BLE001 - a bug in one op must not end the capture
                log.exception("control op failed")
                cmd.finish(False, e)  # the API answers it as an internal error
            except BaseException as e:
                cmd.finish(False, RuntimeError(f"the agent stopped during the request: {e!r}"))
                raise

    def _cancel_commands(self) -> None:
        """The capture loop has ended: what is still queued will never run; say so at once."""
        for cmd in self._queued():
            if cmd.cancel():
                cmd.finish(False, RuntimeError("the agent is stopping; nothing was changed"))

    def _watch(
        self, store: Store, watch: WatchSet, cap: Any, prm: dict[str, Any]
    ) -> dict[str, Any]:
        mac, on = prm["device"], prm["on"]
        changed = watch.add(mac, by_user=True) if on else watch.remove(mac)
        if not on and self._icpt is not None and mac in self._icpt.targets.values():
            changed = False  # still intercepted: its traffic stays watched
            watch.add(mac)
        store.set_setting(WATCH_SETTING, json.dumps(sorted(watch.added)))
        if changed and self._narrowed:
            self._apply_filter(cap, watch)
        else:
            # In the discovery window everything is captured until it ends (devices that
            # have not spoken yet must not be missed); it then narrows to this list.
            self._set(watched=sorted(watch.macs()))
        return {"device": mac, "watched": mac in watch.macs()}

    def _sweep(self) -> dict[str, Any]:
        from spyglass.capture.sweep import sweep

        found = sweep(self.cfg.interface)  # replies pass the capture filter: devices appear
        return {"found": len(found), "devices": found}

    def _start_intercept(self, store: Store, watch: WatchSet) -> Interceptor:
        """ARP-intercept the --target devices and those chosen through the API before; every
        exit of run() restores them, and a watchdog process restores them if this process is
        killed outright. With nothing chosen yet the interceptor waits for the first
        ``intercept`` op (it starts then)."""
        from spyglass.capture.intercept import Interceptor

        cfg = self.cfg
        router = cfg.router or default_router(cfg.interface)
        if router is None:
            raise ValueError(f"no default route via {cfg.interface}: give --router IP")
        icpt = Interceptor(cfg.interface, router)
        self._icpt = icpt
        self._chosen = _stored_choice(store)
        self._set(intercepting=[], router=router)
        try:
            if cfg.targets:
                for ip in cfg.targets:
                    icpt.add(ip)
                # Refuses (InterceptConflict) when another host already intercepts: the agent
                # does not start, as the command line asked for exactly these.
                icpt.start()
            # A saved choice must not keep the agent from starting (the device may be off
            # today): what cannot be intercepted now is reported and kept for next time.
            failed: list[str] = []
            for ip in self._chosen:
                try:
                    self._intercept_on(icpt, ip)
                except ValueError as e:
                    failed.append(f"{ip}: {e}")
        except BaseException:
            icpt.close()
            raise
        if failed:
            self._problem("intercept", "not intercepting chosen device(s) " + "; ".join(failed))
        # Each intercepted packet crosses this interface twice; "ether host TARGET" keeps
        # exactly the copy on the target's side of us in each direction.
        for mac in icpt.targets.values():
            watch.add(mac)
        now = _sorted_ips(icpt.targets)
        self._set(intercepting=now, watched=sorted(watch.macs()))
        if now:
            log.info("intercepting %s (router %s)", ", ".join(now), router)
        else:
            log.info("intercept mode: no device chosen yet (router %s)", router)
        return icpt

    def _intercept_on(self, icpt: Interceptor, ip: str) -> str:
        """Intercept ``ip`` (starting the interceptor for the first device); its true MAC.
        Every refusal becomes a ValueError whose message says why."""
        try:
            # Running: learns and checks its MAC first (InterceptConflict, no answer).
            # Stopped: only noted, and this first device starts the interceptor.
            started = icpt.running
            icpt.add(ip)
            if not started:
                try:
                    icpt.start()  # refuses when another host already intercepts
                except BaseException:
                    icpt.remove(ip)  # forget it: the next start must not try it again
                    raise
        except (RuntimeError, OSError) as e:  # InterceptError/InterceptConflict, the watchdog
            raise ValueError(str(e)) from None
        mac = icpt.targets.get(ip)
        if mac is None:
            raise ValueError(f"{ip} could not be intercepted")
        return mac

    def _intercept_control(self, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The ``intercept`` op on an API worker: refused at once outside intercept mode, else
        run on the capture thread (which owns the watch list and the capture filter)."""
        if self._icpt is None:
            raise ValueError(
                f"the agent is not in intercept mode (it runs in {self.cfg.mode} "
                "mode; start it with --mode intercept to choose devices)"
            )
        result: dict[str, Any] = self._call(fn, timeout_s=INTERCEPT_TIMEOUT_S)
        return result

    def _intercept(
        self, store: Store, watch: WatchSet, pipe: Pipeline, cap: Any, prm: dict[str, Any]
    ) -> dict[str, Any]:
        icpt = self._icpt
        assert icpt is not None
        ip, on = prm["device"], prm["on"]
        if on:
            try:
                mac = self._intercept_on(icpt, ip)
            except ValueError as e:
                log.warning("intercept %s refused: %s", ip, e)
                raise
            changed = watch.add(mac)
            if ip not in self._chosen:
                self._chosen.append(ip)
        else:
            was = icpt.targets.get(ip)
            # Restores its true ARP entries at once (corrections go out over the next 2 s).
            # Un-choosing the last device leaves the interceptor running with none: the reply
            # comes at once, and the next choice needs no new watchdog; forwarding and the
            # sysctls are put back once the corrections are out, and set at the next choice.
            try:
                icpt.remove(ip)
            except OSError as e:  # the watchdog's state file; the restore itself goes ahead
                raise ValueError(f"{ip}: {e}") from None
            if ip in self._chosen:
                self._chosen.remove(ip)
            still = set(icpt.targets.values())
            # Keep watching it if the user watches it or it is a speaker (what watch.py keeps).
            changed = (
                was is not None
                and was not in still
                and was not in watch.added
                and not pipe.inventory.is_speaker(was)
                and watch.remove(was)
            )
        now = icpt.targets
        try:
            store.set_setting(INTERCEPT_SETTING, json.dumps(_sorted_ips(self._chosen)))
        except StoreError as e:
            # The interception itself happened (or was undone): say so, and that it is not kept.
            self._problem(
                "store",
                f"the intercept choice was not saved (a restarted agent will not know it): {e}",
            )
        if set(self._chosen) <= set(now):
            self._clear_problem("intercept")
        if changed and self._narrowed:
            self._apply_filter(cap, watch)
        intercepting = _sorted_ips(now)
        self._set(intercepting=intercepting, watched=sorted(watch.macs()))
        log.info(
            "intercept %s %s: now intercepting %s",
            ip,
            "on" if on else "off",
            ", ".join(intercepting) or "nothing",
        )
        return {"device": ip, "intercepting": intercepting}
