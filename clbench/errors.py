"""Every error clbench raises on purpose, in one leaf module (it imports nothing from clbench).

Two families:

- `UserError`: something the user (or a plugin author, or a submitter) can fix. The CLI prints one line,
  `clbench: error: <message>`, and exits with status 2; the message names the key, file or plugin and says
  why. `--debug` (or CLBENCH_DEBUG=1) adds the traceback.
- anything else is a bug in clbench: the CLI says so and how to report it.

The subclasses also derive from the built-in exception a caller would naturally catch (ValueError,
KeyError, RuntimeError), so `except ValueError` keeps working for code written against older versions.
"""
from __future__ import annotations


class ClbenchError(Exception):
    """Base class of every error clbench raises on purpose."""


class UserError(ClbenchError):
    """An error the user can act on: the message is one line that names what is wrong and why."""


class ConfigError(UserError, ValueError):
    """A bad configuration key or value; the message names the key and the reason."""


class UnknownNameError(UserError, KeyError):
    """A name that is not registered (benchmark, strategy, metric, ...); the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class DataError(UserError, ValueError):
    """A dataset file that is missing, truncated or inconsistent; the message names the file and the problem."""


class PluginError(UserError, RuntimeError):
    """A plugin broke its contract; the message names the plugin, the hook and the contract."""


class TrainingDiverged(UserError, RuntimeError):
    """A non-finite training loss (or weights); the run is stopped and nothing is written."""


class SubmissionError(UserError, ValueError):
    """A leaderboard submission (or result file) that is malformed or fails a check."""


class ResultFileError(UserError, ValueError):
    """A result.json that cannot be read or does not match the result schema."""


class RunInterrupted(ClbenchError):
    """SIGTERM or SIGINT arrived: the run saved a checkpoint and stopped; the same command resumes it."""

    def __init__(self, signum: int, where: str, folder):
        import signal
        self.signum, self.where, self.folder = signum, where, folder
        super().__init__(f"interrupted by {signal.Signals(signum).name} {where}; checkpoint saved in {folder}. "
                         f"Re-run the same command to resume (or add resume=false to start over)")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StorageError(UserError, OSError):
    """A file or folder clbench must write cannot be written (disk full, read-only, not a folder, name too
    long); the message names the path and what to do. Nothing half-written is left behind."""


def bad_value(key: str, why: str) -> ConfigError:
    """The one phrasing of a bad configuration value: "bad value for 'KEY': WHY"."""
    return ConfigError(f"bad value for '{key}': {why}")


def failure(e: BaseException) -> dict:
    """What a failed run records (sweep manifests, failed/<run id>.txt): one line, `Type: message` cut at 500
    characters, and the traceback. Call it inside the `except` block."""
    import traceback
    return {"error": f"{type(e).__name__}: {e}".splitlines()[0][:500], "traceback": traceback.format_exc()}
