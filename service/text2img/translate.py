"""Translators: prompt text (Japanese or any language) -> the English that GLIDE draws.

GLIDE only understands English. `CloudTranslator` calls Cloud Translation v3
(`TranslationServiceClient.translate_text`, REST transport); `PassThroughTranslator`
is used when translation is off and refuses non-Latin text instead of letting the
model draw garbage from it.

Text *needs translation* when it holds a letter (Unicode category L*) outside the Latin
script: Japanese kana and kanji, Chinese, Korean, Cyrillic, Greek, Arabic, ... Latin
letters (with accents, full-width forms), digits, punctuation, symbols and emoji do not
count, so such text is drawn as written. Modes, per request:

| mode     | Latin-script text                    | other scripts (e.g. Japanese)         |
| -------- | ------------------------------------ | ------------------------------------- |
| `auto`   | used as is, no API call              | translated (error if translation off) |
| `always` | translated; used as is when the      | translated (error if translation off) |
|          | service cannot translate             |                                       |
| `never`  | used as is                           | refused: the model cannot draw it     |
"""

from __future__ import annotations

import logging
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from text2img.settings import Settings

log = logging.getLogger(__name__)

Mode = Literal["auto", "always", "never"]
TRANSLATE_SCOPE = "https://www.googleapis.com/auth/cloud-translation"


class TranslationError(Exception):
    """Cloud Translation failed or is not set up; the message says what to do (HTTP 424)."""


class TranslationRefused(Exception):
    """The text cannot be drawn under the requested mode (HTTP 400); says what to do."""


@dataclass(frozen=True)
class Translation:
    """The English text to draw, and what happened on the way."""

    text: str
    detected_language: str | None  # BCP-47 code from the API; None when not asked
    translated: bool  # True when the Translation API produced `text`


def needs_translation(text: str) -> bool:
    """True when `text` holds a letter outside the Latin script (see the module docstring)."""
    return not is_latin_text(text)


def is_latin_text(text: str) -> bool:
    """True when every letter in `text` is from the Latin script (incl. full-width).

    Digits, punctuation, symbols and emoji do not count as letters.
    """
    for ch in text:
        if not unicodedata.category(ch).startswith("L"):
            continue
        if "LATIN" not in unicodedata.name(ch, ""):
            return False
    return True


def _refuse_untranslatable(mode: Mode) -> TranslationRefused:
    if mode == "never":
        return TranslationRefused(
            "the prompt contains non-Latin text (e.g. Japanese) and translate is 'never'; "
            "the model only understands English: send English text or use translate 'auto'"
        )
    return TranslationRefused(
        "the prompt contains non-Latin text (e.g. Japanese) but translation is off on this "
        "service (TEXT2IMG_TRANSLATION=off); send the prompt in English, or turn translation "
        "on with a Google Cloud project (TEXT2IMG_TRANSLATE_PROJECT)"
    )


class Translator(Protocol):
    """Turns a prompt into the English text to draw."""

    enabled: bool
    available: bool  # non-Latin text can be translated (as far as start-up could tell)
    message: str  # one line for GET /v1/models: what works and, if not, what to do

    def translate(self, text: str, mode: Mode = "auto") -> Translation:
        """Raises TranslationRefused (400) or TranslationError (424)."""
        ...


class PassThroughTranslator:
    """Used when translation is off: Latin text passes unchanged (in every mode: it needs no
    translation), other scripts are refused."""

    enabled = False
    available = False
    message = (
        "translation is off on this service (TEXT2IMG_TRANSLATION=off): write prompts in "
        "English; Japanese and other non-Latin text is refused"
    )

    def translate(self, text: str, mode: Mode = "auto") -> Translation:
        if needs_translation(text):
            raise _refuse_untranslatable(mode)
        return Translation(text=text, detected_language=None, translated=False)


class UnconfiguredTranslator:
    """Translation is on but no Google Cloud project/credentials were found at start-up."""

    enabled = True
    available = False

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.message = (
            f"Cloud Translation is not set up ({reason}): English prompts work; for Japanese "
            "run `gcloud auth application-default login` and set TEXT2IMG_TRANSLATE_PROJECT"
        )

    def translate(self, text: str, mode: Mode = "auto") -> Translation:
        if mode == "never" or not needs_translation(text):
            return PassThroughTranslator().translate(text, "never")
        raise TranslationError(
            f"Cloud Translation is not set up ({self.reason}); run "
            "`gcloud auth application-default login` and set TEXT2IMG_TRANSLATE_PROJECT, "
            "or set TEXT2IMG_TRANSLATION=off and write prompts in English"
        )


class CloudTranslator:
    """Cloud Translation v3 `translate_text` to English, with an LRU cache of results.

    Thread-safe: the client is shared, the cache is guarded by a lock.
    """

    enabled = True
    available = True
    message = "Japanese and other non-Latin prompts are translated to English (Cloud Translation)"

    def __init__(
        self,
        project: str,
        *,
        endpoint: str = "",
        credentials: Any = None,
        timeout_s: float = 10.0,
        cache_size: int = 1024,
        iam_wait_s: float = 600.0,
        iam_first_delay_s: float = 5.0,
    ) -> None:
        from google.api_core import retry as retries
        from google.api_core.exceptions import ServiceUnavailable, TooManyRequests
        from google.cloud import translate_v3

        if not project:
            raise ValueError("project must be a Google Cloud project id")
        options: dict[str, str] = {"api_endpoint": endpoint} if endpoint else {}
        self._client = translate_v3.TranslationServiceClient(
            transport="rest", credentials=credentials, client_options=options or None
        )
        self.parent = f"projects/{project}/locations/global"
        self.timeout_s = timeout_s
        self._retry = retries.Retry(
            predicate=retries.if_exception_type(ServiceUnavailable, TooManyRequests),
            initial=0.2,
            maximum=2.0,
            multiplier=2.0,
            timeout=timeout_s,
        )
        self._cache: OrderedDict[str, Translation] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.api_calls = 0
        # Until the first success, a 403 may be a fresh IAM grant still applying (Google:
        # typically 2 minutes, sometimes 7 or more): wait it out, up to iam_wait_s after
        # start (the VM's first boot runs right after `pulumi up` granted the role).
        self._iam_deadline = time.monotonic() + iam_wait_s
        self._iam_first_delay_s = iam_first_delay_s
        self._ever_succeeded = False

    def translate(self, text: str, mode: Mode = "auto") -> Translation:
        if mode == "never":
            return PassThroughTranslator().translate(text, "never")
        if mode == "auto" and is_latin_text(text):
            return Translation(text=text, detected_language=None, translated=False)
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
        result = self._call(text)
        if self._cache_size:
            with self._lock:
                self._cache[text] = result
                self._cache.move_to_end(text)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return result

    def _call(self, text: str) -> Translation:
        from google.api_core import exceptions as gexc

        def request() -> Any:
            self.api_calls += 1
            return self._client.translate_text(
                request={
                    "parent": self.parent,
                    "contents": [text],
                    "mime_type": "text/plain",
                    "target_language_code": "en",
                },
                retry=self._retry,
                timeout=self.timeout_s,
            )

        iam_wait = self._iam_wait()
        try:
            response = iam_wait(request)() if iam_wait is not None else request()
        except gexc.Forbidden as exc:  # HTTP 403 (PermissionDenied is one)
            raise self._refused(exc) from exc
        except gexc.GoogleAPIError as exc:
            if isinstance(exc, gexc.RetryError) and isinstance(exc.cause, gexc.Forbidden):
                raise self._refused(exc.cause) from exc  # the IAM wait ran out
            message = getattr(exc, "message", None) or type(exc).__name__
            raise TranslationError(
                f"Cloud Translation failed ({message}); try again, or send English text "
                "with translate 'never'"
            ) from exc
        except Exception as exc:  # transport errors (connection refused, DNS, TLS, timeout)
            raise TranslationError(
                f"cannot reach Cloud Translation ({type(exc).__name__}); try again, or "
                "send English text with translate 'never'"
            ) from exc
        self._ever_succeeded = True
        if not response.translations or not response.translations[0].translated_text.strip():
            raise TranslationError("Cloud Translation returned no text; try rephrasing")
        first = response.translations[0]
        detected = first.detected_language_code or None
        return Translation(
            text=first.translated_text.strip(), detected_language=detected, translated=True
        )

    def _iam_wait(self) -> Any:
        """Until the first success, a 403 may be a fresh IAM grant still applying (Google:
        typically 2 minutes, sometimes 7 or more): a google.api_core Retry that waits 403s
        out until iam_wait_s after start, logging each; None once a call has worked."""
        from google.api_core import exceptions as gexc
        from google.api_core import retry as retries

        left = self._iam_deadline - time.monotonic()
        if self._ever_succeeded or left <= 0:
            return None

        def logged(exc: Exception) -> None:
            log.warning(
                "Cloud Translation refused the call (HTTP 403): perhaps the IAM grant is "
                "still applying; retrying for up to %.0f s more",
                max(0.0, self._iam_deadline - time.monotonic()),
            )

        return retries.Retry(
            predicate=retries.if_exception_type(gexc.Forbidden),
            initial=self._iam_first_delay_s,
            maximum=60.0,
            multiplier=2.0,
            timeout=left,
            on_error=logged,
        )

    @staticmethod
    def _refused(exc: BaseException) -> TranslationError:
        message = getattr(exc, "message", None) or str(exc)
        return TranslationError(
            f"Cloud Translation refused the request ({message}); give the service account "
            "roles/cloudtranslate.user and enable translate.googleapis.com"
        )


def make_translator(settings: Settings) -> Translator:
    """The translator the settings ask for; never raises (problems surface per request)."""
    if settings.translation == "off":
        return PassThroughTranslator()
    credentials: Any = None
    project = settings.translate_project
    endpoint = settings.translate_endpoint
    if endpoint.startswith("http://"):
        # A plain-HTTP endpoint is a local emulator or fake server: never send real
        # credentials over it.
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
    if credentials is None or not project:
        try:
            import google.auth

            adc, adc_project = google.auth.default(scopes=[TRANSLATE_SCOPE])
        except Exception as exc:  # DefaultCredentialsError and transport failures
            return _unconfigured(f"no Application Default Credentials ({type(exc).__name__})")
        credentials = credentials or adc
        project = project or adc_project or ""
    if not project:
        return _unconfigured("no project: set TEXT2IMG_TRANSLATE_PROJECT")
    return CloudTranslator(
        project,
        endpoint=endpoint,
        credentials=credentials,
        timeout_s=settings.translate_timeout_s,
        cache_size=settings.translate_cache_size,
    )


def _unconfigured(reason: str) -> UnconfiguredTranslator:
    log.warning(
        "Cloud Translation is not available (%s): English prompts work, others are refused. "
        "For Japanese prompts run `gcloud auth application-default login` and set "
        "TEXT2IMG_TRANSLATE_PROJECT; TEXT2IMG_TRANSLATION=off silences this.",
        reason,
    )
    return UnconfiguredTranslator(reason)
