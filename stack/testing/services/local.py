"""What every locally started server shares: a temp dir, a free port, a child process, restarts."""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
from abc import abstractmethod
from pathlib import Path
from typing import ClassVar

from stack.testing.services.base import OwnedServer, ServiceError
from stack.testing.services.processes import RunAs, ServerProcess, free_port, read_tail

logger = logging.getLogger(__name__)


class LocalServer(OwnedServer):
    """A server binary run as our child process on 127.0.0.1, in a temp dir removed at teardown.

    Subclasses say how to prepare the dir (`_prepare`), which command to run (`_argv`) and
    which URL reaches it (`_server_url`). Mix in before the kind's base class, e.g.
    `class LocalRedis(LocalServer, RedisService)`.
    """

    provider = "local"
    START_TIMEOUT: ClassVar[float] = 10.0
    PORT_ATTEMPTS: ClassVar[int] = 3
    LOG_NAME: ClassVar[str] = "server.log"
    STOP_SIGNAL: ClassVar[signal.Signals] = signal.SIGTERM
    DEATH_SIGNAL: ClassVar[signal.Signals] = signal.SIGTERM

    port: int | None
    run_as: RunAs | None
    _dir: Path | None
    _process: ServerProcess | None
    _fixed_port: bool

    def _init_local(self, port: int | None, run_as: RunAs | None = None) -> None:
        self.port = port
        self.run_as = run_as
        self._fixed_port = port is not None
        self._dir = None
        self._process = None

    @property
    def directory(self) -> Path | None:
        return self._dir

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    # --- subclass hooks -------------------------------------------------------------------------
    @abstractmethod
    def _prepare(self, directory: Path) -> None:
        """One-time setup of a fresh temp dir (e.g. initdb)."""

    @abstractmethod
    def _argv(self, directory: Path, port: int) -> list[str]:
        """The server command line."""

    @abstractmethod
    def _server_url(self, port: int) -> str:
        """The URL clients use to reach the server on `port`."""

    def _make_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"stack-{self.name}-"))

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start on `port` (or a free one) and wait until the server answers."""
        if self._dir is None:
            directory = self._make_dir()
            self._dir = directory
            self._prepare(directory)
        attempts = 1 if self._fixed_port else self.PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            if not self._fixed_port:
                self.port = free_port()
            try:
                self._launch()
                return
            except ServiceError:
                self._stop_process()
                # Another process may have taken the free port between our check and the bind.
                if attempt == attempts:
                    raise
                logger.debug("%s on port %s did not come up; retrying", self.name, self.port)

    def _launch(self) -> None:
        assert self._dir is not None and self.port is not None
        self.url = self._server_url(self.port)
        self._process = ServerProcess(
            self._argv(self._dir, self.port),
            name=f"{self.name} :{self.port}",
            log_path=self._dir / self.LOG_NAME,
            cwd=self._dir,
            run_as=self.run_as,
            stop_signal=self.STOP_SIGNAL,
            death_signal=self.DEATH_SIGNAL,
        )
        self._process.start()
        self.wait_ready(self.START_TIMEOUT)

    def stop(self) -> None:
        """Stop the server but keep its dir and port, so `start()` brings it back at `url`."""
        self._stop_process()
        # From now on the port is ours: a restart must come back where clients expect it.
        self._fixed_port = self.port is not None

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stop()

    def teardown(self) -> None:
        try:
            self._stop_process()
        finally:
            directory, self._dir = self._dir, None
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)

    # --- diagnostics ----------------------------------------------------------------------------
    def _check_alive(self) -> None:
        process = self._process
        if process is None or not process.alive():
            code = process.exit_code() if process else None
            raise ServiceError(
                f"{self.name} (local) on port {self.port} exited with code {code} before "
                "accepting connections" + self._diagnostics()
            )

    def _diagnostics(self) -> str:
        if self._dir is None:
            return ""
        log = self._dir / self.LOG_NAME
        return f"\n--- {log} (last lines) ---\n{read_tail(log)}"
