"""Google Sheets, shared by the source (``sources/gsheet.py``) and the write-back and export
sink (``sinks/gsheet.py``): targets, credentials, and one client over gspread.

**Targets.** ``gsheet://SPREADSHEET_ID/WORKSHEET`` (the worksheet's title, URL-quoted where
it holds a ``/``; left out: the first worksheet) or the sheet's address in a browser,
``https://docs.google.com/spreadsheets/d/ID/edit#gid=N`` (``gid`` picks the worksheet by
its id; none: the first).

**Credentials**, the first found of: ``--credentials FILE`` (``[source] credentials``,
``credentials=``), ``GOOGLE_APPLICATION_CREDENTIALS``, then gspread's own files in its
config folder (``~/.config/gspread/``: ``service_account.json``, then
``authorized_user.json``, the token an earlier interactive ``gspread.oauth()`` stored). A
file is a service account's key or an authorized user's token (its ``type`` says which).
A run never starts a browser flow: with only an OAuth client file (``credentials.json``)
it stops with a one-line error saying how to make the token once. Only the path of a
file is ever printed or logged, never what it holds, nor a token.

**The API's address** is ``https://sheets.googleapis.com`` unless ``ROWPILOT_SHEETS_API_URL``
names another root (a proxy, or the tests' fake on 127.0.0.1). gspread's URLs are fixed,
so the client's session rewrites that one root on every request; the token endpoint is
the ``token_uri`` of the credentials file, as google-auth reads it.

**Errors** are mapped here once: a refused token or a 401/403 is a ``ProviderSetupError``
naming the credentials file (exit 2), an unknown spreadsheet or worksheet a
``SourceNotFoundError``, a 429 a ``RateLimitError`` with the server's ``Retry-After``, a
5xx or a connection failure a retryable ``ProviderServerError`` /
``ProviderConnectionError``; gspread is an optional extra (``rowpilot[sheets]``) and its
absence is a one-line ``ConfigError`` naming the install command.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rowpilot.errors import (
    ConfigError,
    ProviderConnectionError,
    ProviderServerError,
    ProviderSetupError,
    RateLimitError,
    SourceError,
    SourceNotFoundError,
)

if TYPE_CHECKING:
    from gspread.http_client import HTTPClient

SCHEME = "gsheet"
API_URL_ENV = "ROWPILOT_SHEETS_API_URL"
GOOGLE_API_ROOT = "https://sheets.googleapis.com"
CREDENTIALS_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
INSTALL_HINT = "pip install 'rowpilot[sheets]'"
SCOPES = ("https://www.googleapis.com/auth/spreadsheets",)
_BROWSER_URL = re.compile(
    r"https://docs\.google\.com/spreadsheets/d/([A-Za-z0-9_-]+)[^#]*(?:#(.*))?"
)


@dataclass(frozen=True)
class SheetTarget:
    """A worksheet: by title, by id (``gid``), or the first (both None)."""

    spreadsheet: str
    title: str | None = None
    gid: int | None = None
    text: str = ""  # as the user wrote it, for messages

    def __str__(self) -> str:
        return self.text or f"{SCHEME}://{self.spreadsheet}/{self.title or ''}"


def is_sheet_target(text: str) -> bool:
    return text.lower().startswith(f"{SCHEME}://") or _BROWSER_URL.match(text) is not None


def parse_target(text: str) -> SheetTarget:
    """``gsheet://ID/TITLE`` or a browser address; a ConfigError names what is wrong."""
    browser = _BROWSER_URL.match(text)
    if browser is not None:
        fragment = urllib.parse.parse_qs(browser.group(2) or "")
        gid = fragment.get("gid", [None])[0]
        if gid is not None and not gid.isdigit():
            raise ConfigError(f"the worksheet id gid={gid!r} is not a number", file=text)
        return SheetTarget(browser.group(1), gid=int(gid) if gid else None, text=text)
    rest = text[len(SCHEME) + 3 :] if text.lower().startswith(f"{SCHEME}://") else ""
    spreadsheet, _, title = rest.partition("/")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", spreadsheet):
        raise ConfigError(
            "not a Google Sheets address",
            file=text,
            hint="write gsheet://SPREADSHEET_ID/WORKSHEET, or paste the sheet's browser address",
        )
    title = urllib.parse.unquote(title.rstrip("/"))
    return SheetTarget(spreadsheet, title=title or None, text=text)


def quoted_title(title: str) -> str:
    """A worksheet's title as an A1 range prefix: ``'Q1 ''24'``."""
    return "'" + title.replace("'", "''") + "'"


def column_letters(index: int) -> str:
    """0 → ``A``, 26 → ``AA``."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


# -- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundCredentials:
    """Where credentials were found (``how``: ``--credentials``, the variable's name or
    ``gspread``) and the file's path; what the file holds is never kept here."""

    how: str
    path: Path

    def describe(self) -> str:
        return f"{self.path} (from {self.how})"


def gspread_folder() -> Path:
    """gspread's config folder (its ``get_config_dir``), read without importing gspread."""
    if os.name == "nt":
        return Path(os.environ.get("APPDATA", Path.home()), "gspread")
    return Path.home() / ".config" / "gspread"


def find_credentials(given: str | os.PathLike[str] | None) -> FoundCredentials | None:
    """The credentials file to use (module docstring's order); None if there is none."""
    if given is not None:
        return FoundCredentials("--credentials", Path(given))
    from_env = os.environ.get(CREDENTIALS_ENV)
    if from_env:
        return FoundCredentials(CREDENTIALS_ENV, Path(from_env))
    folder = gspread_folder()
    for name in ("service_account.json", "authorized_user.json"):
        if (folder / name).is_file():
            return FoundCredentials("gspread", folder / name)
    return None


def _missing_credentials(target: str) -> ProviderSetupError:
    folder = gspread_folder()
    if (folder / "credentials.json").is_file():
        return ProviderSetupError(
            f"only an OAuth client file ({folder / 'credentials.json'}) was found, and a "
            "run does not open a browser",
            file=target,
            hint="run python -c 'import gspread; gspread.oauth()' once to store a token, or "
            "pass --credentials with a service account's key file",
        )
    return ProviderSetupError(
        "no Google credentials found",
        file=target,
        hint=f"pass --credentials KEY.json (a service account's key), set {CREDENTIALS_ENV}, "
        f"or store one in {folder}",
    )


def _load_credentials(found: FoundCredentials, target: str) -> Any:
    try:
        info = json.loads(found.path.read_text(encoding="utf-8"))
        kind = info.get("type") if isinstance(info, dict) else None
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not JSON"
        raise ProviderSetupError(
            f"the credentials file {found.describe()} cannot be read: {reason}",
            file=target,
            hint="pass --credentials with a service account's JSON key file",
        ) from None
    try:
        if kind == "service_account":
            from google.oauth2.service_account import Credentials as ServiceAccount

            return ServiceAccount.from_service_account_info(info, scopes=SCOPES)  # type: ignore[no-untyped-call]
        if kind == "authorized_user":
            from google.oauth2.credentials import Credentials as UserCredentials

            return UserCredentials.from_authorized_user_info(info, scopes=SCOPES)  # type: ignore[no-untyped-call]
    except ValueError:
        pass  # a field missing or malformed: said below, without the file's content
    raise ProviderSetupError(
        f"the credentials file {found.describe()} is neither a service account's key nor an "
        "authorized user's token",
        file=target,
        hint="download a service account's JSON key (IAM > Service accounts > Keys)",
    )


# -- the client ------------------------------------------------------------------------------


def api_root() -> str:
    return os.environ.get(API_URL_ENV, GOOGLE_API_ROOT).rstrip("/")


def require_gspread(target: str) -> None:
    try:
        import gspread  # noqa: F401
    except ImportError:
        raise ConfigError(
            "reading or writing Google Sheets needs the sheets extra",
            file=target,
            hint=INSTALL_HINT,
        ) from None


def _session(credentials: Any, root: str) -> Any:
    """google-auth's authorized session, sending gspread's fixed URLs to ``root``."""
    from google.auth.transport.requests import AuthorizedSession

    class RootedSession(AuthorizedSession):
        def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(url, str) and url.startswith(GOOGLE_API_ROOT):
                url = root + url[len(GOOGLE_API_ROOT) :]
            return super().request(method, url, *args, **kwargs)  # type: ignore[no-untyped-call]

    return RootedSession(credentials)  # type: ignore[no-untyped-call]


class SheetsClient:
    """The calls rowpilot makes, each with its errors mapped (module docstring)."""

    def __init__(self, target: SheetTarget, credentials: str | os.PathLike[str] | None) -> None:
        require_gspread(str(target))
        from gspread.http_client import HTTPClient

        self.target = target
        found = find_credentials(credentials)
        if found is None:
            raise _missing_credentials(str(target))
        self.credentials = found
        session = _session(_load_credentials(found, str(target)), api_root())
        self._http: HTTPClient = HTTPClient(auth=None, session=session)  # type: ignore[arg-type]
        self._http.set_timeout(60)

    def worksheet(self) -> dict[str, Any]:
        """The target worksheet's properties (title, sheetId, gridProperties)."""
        book = self._call(self._http.fetch_sheet_metadata, self.target.spreadsheet)
        sheets = [sheet["properties"] for sheet in book.get("sheets", [])]
        for properties in sheets:
            if self.target.title is None and self.target.gid is None:
                return dict(properties)
            if properties.get("title") == self.target.title:
                return dict(properties)
            if self.target.gid is not None and properties.get("sheetId") == self.target.gid:
                return dict(properties)
        titles = ", ".join(repr(p.get("title")) for p in sheets) or "none"
        raise SourceNotFoundError(
            "the spreadsheet has no such worksheet",
            file=str(self.target),
            hint=f"its worksheets are {titles}",
        )

    def has_worksheet(self, title: str) -> bool:
        book = self._call(self._http.fetch_sheet_metadata, self.target.spreadsheet)
        return any(s["properties"].get("title") == title for s in book.get("sheets", []))

    def values(self, a1: str, *, typed: bool = True) -> list[list[Any]]:
        """The cells of a range, rows of values (trailing empty cells left out)."""
        params: dict[str, Any] = {
            "valueRenderOption": "UNFORMATTED_VALUE" if typed else "FORMATTED_VALUE",
            "dateTimeRenderOption": "FORMATTED_STRING",
            "majorDimension": "ROWS",
        }
        answer = self._call(self._http.values_get, self.target.spreadsheet, a1, params)
        rows: list[list[Any]] = answer.get("values", [])
        return rows

    def values_batch(self, ranges: Sequence[str]) -> list[list[list[Any]]]:
        params: dict[str, Any] = {
            "valueRenderOption": "UNFORMATTED_VALUE",
            "dateTimeRenderOption": "FORMATTED_STRING",
            "majorDimension": "ROWS",
        }
        answer = self._call(
            self._http.values_batch_get, self.target.spreadsheet, list(ranges), params
        )
        return [found.get("values", []) for found in answer.get("valueRanges", [])]

    def write(self, data: Sequence[Mapping[str, Any]]) -> None:
        """One ``values.batchUpdate``: RAW, so a text starting with ``=`` is never a formula."""
        body = {"valueInputOption": "RAW", "data": list(data)}
        self._call(self._http.values_batch_update, self.target.spreadsheet, body)

    def structure(self, requests: Sequence[Mapping[str, Any]]) -> Any:
        """One ``spreadsheets.batchUpdate`` (add a worksheet, widen one)."""
        body = {"requests": list(requests)}
        return self._call(self._http.batch_update, self.target.spreadsheet, body)

    def clear(self, a1: str) -> None:
        self._call(self._http.values_clear, self.target.spreadsheet, a1)

    def _call(self, method: Any, *args: Any) -> Any:
        from google.auth.exceptions import RefreshError, TransportError
        from gspread.exceptions import APIError
        from requests import RequestException

        try:
            return method(*args)
        except RefreshError:
            raise self._refused("the token endpoint refused the credentials") from None
        except APIError as error:
            raise self._api_error(error) from None
        except (TransportError, RequestException) as error:
            raise ProviderConnectionError(
                f"Google Sheets cannot be reached ({type(error).__name__})",
                hint=f"check the network (or {API_URL_ENV})",
            ) from None

    def _refused(self, what: str) -> ProviderSetupError:
        return ProviderSetupError(
            f"{what} ({self.credentials.describe()})",
            file=str(self.target),
            hint="check the key file, and share the spreadsheet with the account's email",
        )

    def _api_error(self, error: Any) -> Exception:
        from rowpilot.llm.limits import parse_retry_after

        code = int(error.code)
        message = str(error.error.get("message", "")).split("\n")[0][:200]
        if code in (401, 403):
            return self._refused(f"Google Sheets refused the request: {message}")
        if code == 404:
            return SourceNotFoundError(
                "no such spreadsheet (or it is not shared with these credentials)",
                file=str(self.target),
                hint=f"check the id, and share it with {self.credentials.describe()}'s account",
            )
        if code == 429:
            headers = dict(error.response.headers)
            return RateLimitError(
                f"Google Sheets: {message}", retry_after=parse_retry_after(headers)
            )
        if code >= 500:
            return ProviderServerError(f"Google Sheets answered {code}: {message}")
        return SourceError(f"Google Sheets answered {code}: {message}", file=str(self.target))
