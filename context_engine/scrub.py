"""Secret scrubbing: credentials written into ordinary source files are masked before any text is stored or shown.

The detector is Yelp's `detect-secrets` (its plugins, called line by line through their `analyze_line` API, and
its false-positive heuristics): a maintained set of credential shapes (AWS, Azure, GitHub, GitLab, Slack, Stripe,
OpenAI, PyPI, npm, JWTs, private keys, `password = "..."`-style assignments, ...) that runs offline. Its entropy
plugins are left out (hashes, test vectors and base64 fixtures would be masked everywhere) and so is the public-IP
one (an address is not a credential).

Running every plugin over every line costs ~20 regexes per line; instead each plugin's own patterns (and the
keyword plugin's deny-list) first find the candidate lines over the whole text, and only those lines are handed
to the plugins. Masking keeps the code's shape: a secret value becomes `REDACTED` in place (quotes, commas and
line count unchanged), a private key block keeps its BEGIN/END lines and loses its body, line breaks kept.

Every mask but a private key block depends on its line alone, so a file scrubbed again after an edit (the index's
update, the current file's prefix and suffix at every keystroke) only scans the lines not seen in that path's
recent texts: a 5,000-line file costs its changed lines, not 5,000 (a path holding a private key block is always
scrubbed whole).
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import os
import re
import threading

from detect_secrets.filters import heuristic
from detect_secrets.plugins import (
    aws, azure_storage_key, basic_auth, cloudant, discord, github_token, gitlab_token, ibm_cloud_iam, ibm_cos_hmac,
    jwt, keyword, mailchimp, npm, openai, private_key, pypi_token, sendgrid, slack, softlayer, square_oauth, stripe,
    telegram_token, twilio,
)

REDACTED = "<redacted>"
MEMO_ENTRIES = 100_000  # scrubbed texts remembered by content hash (16 bytes each when nothing was found)
_memo: dict[bytes, str | None] = {}
_memo_lock = threading.Lock()
_MISSING = object()
# Per path, the lines of its recent texts and their masks (None: unchanged); _WHOLE for a path whose text holds a
# private key block (masked across lines: scrubbed whole every time).
RECENT_PATHS = 16
_recent: collections.OrderedDict[str, dict[str, str | None] | object] = collections.OrderedDict()
_WHOLE = object()

_PLUGINS = (
    aws.AWSKeyDetector(), azure_storage_key.AzureStorageKeyDetector(), basic_auth.BasicAuthDetector(),
    cloudant.CloudantDetector(), discord.DiscordBotTokenDetector(), github_token.GitHubTokenDetector(),
    gitlab_token.GitLabTokenDetector(), ibm_cloud_iam.IbmCloudIamDetector(), ibm_cos_hmac.IbmCosHmacDetector(),
    jwt.JwtTokenDetector(), mailchimp.MailchimpDetector(), npm.NpmDetector(), openai.OpenAIDetector(),
    pypi_token.PypiTokenDetector(), sendgrid.SendGridDetector(), slack.SlackDetector(), softlayer.SoftlayerDetector(),
    square_oauth.SquareOAuthDetector(), stripe.StripeDetector(), telegram_token.TelegramBotTokenDetector(),
    twilio.TwilioKeyDetector(),
)
_KEYWORD = keyword.KeywordDetector()

# Where a line may hold a secret (a superset of the lines the plugins flag): the patterns of the plugins that have
# a distinctive shape, and, over the lowercased text, the words every other match contains (the keyword plugin's
# deny-list; the key/password/token names of the IBM, Cloudant and SoftLayer assignment patterns).
_ASSIGNMENT_PLUGINS = (cloudant.CloudantDetector, ibm_cloud_iam.IbmCloudIamDetector, ibm_cos_hmac.IbmCosHmacDetector,
                       softlayer.SoftlayerDetector)
# (pattern, search the lowercased text, the plugins to ask about the lines it finds)
_ALL = (*_PLUGINS, _KEYWORD)  # (plugins are known by their index: they are not hashable)
_TRIGGERS = [(p, False, (i,)) for i, plugin in enumerate(_PLUGINS) if not isinstance(plugin, _ASSIGNMENT_PLUGINS)
             for p in plugin.denylist]
_TRIGGERS.append((re.compile("|".join([w for w in keyword.DENYLIST if w.isascii()] + ["contrase"])), True,
                  (len(_PLUGINS),)))
_TRIGGERS.append((re.compile("key|pw|pass|token|cloudant|softlayer"), True,
                  tuple(i for i, p in enumerate(_PLUGINS) if isinstance(p, _ASSIGNMENT_PLUGINS))))
_PRIVATE_KEY = private_key.PrivateKeyDetector()
_PEM = re.compile(
    r"(-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----)"
    r"(?:(.{0,20000}?)(-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----)|([A-Za-z0-9+/=:,\\\s-]*))",
    re.DOTALL,
)
_QUOTES = "'\"`"
_NEWLINE = re.compile("\n")


def _false_positive(secret: str, line: str) -> bool:
    return (
        secret == REDACTED
        or heuristic.is_templated_secret(secret)
        or heuristic.is_prefixed_with_dollar_sign(secret)
        or heuristic.is_sequential_string(secret)
        or heuristic.is_not_alphanumeric_string(secret)
        or heuristic.is_indirect_reference(line)
    )


def _mask_pem(text: str) -> str:
    def body(m: re.Match) -> str:
        inner = m.group(2) if m.group(3) is not None else m.group(4)
        lines = inner.count("\n")
        return m.group(1) + REDACTED + "\n" * lines + (m.group(3) or "")

    return _PEM.sub(body, text)


_TOKEN_SHAPED = re.compile(r"[\w\-+/.~=]+")


def _spans(plugin, value: str, line: str) -> list[tuple[int, int]]:
    """Where `value`, a secret the plugin reported on `line`, lies. A plugin reports what its pattern's group
    captured, which for token shapes is only a part (GitHub's `ghp` of `ghp_...`): a token-shaped match is masked
    whole; a match with context around the value (`key = "..."`) only at the value."""
    out = []
    for pattern in getattr(plugin, "denylist", ()):
        for m in pattern.finditer(line):
            groups = [i for i in range(1, (m.re.groups or 0) + 1) if m.group(i) == value]
            if m.group(0) != value and not groups:
                continue
            if _TOKEN_SHAPED.fullmatch(m.group(0)):
                out.append(m.span())
            else:
                out.append(m.span(groups[0]) if groups else m.span())
    return out


def _mask_line(line: str, path: str, plugins) -> str:
    found: list[tuple[object, str]] = []  # (plugin, value)
    for plugin in map(_ALL.__getitem__, sorted(plugins)):
        for secret in plugin.analyze_line(filename=path or "x.py", line=line):
            found.append((plugin, secret.secret_value))
    spans: list[tuple[int, int]] = []
    for plugin, value in found:
        if not value or _false_positive(value, line):
            continue
        if plugin is _KEYWORD:  # a literal only (`password = get_password()` is code, not a secret)
            pattern = f"(?<=[{_QUOTES}]){re.escape(value)}(?=[{_QUOTES}])"
            spans += [m.span() for m in re.finditer(pattern, line)]
        else:
            spans += _spans(plugin, value, line) or [m.span() for m in re.finditer(re.escape(value), line)]
    if not spans:
        return line
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in reversed(merged):
        line = line[:start] + REDACTED + line[end:]
    return line


def scrub(text: str, path: str = "") -> str:
    """`text` with credential values replaced by REDACTED; the same text (object) when none is found.

    `path` (its extension) tells the keyword plugin which assignment forms the language has. Results are memoised
    by content (a file is scrubbed when it is parsed and again when retrieval reads it)."""
    if not text:
        return text
    key = hashlib.blake2b(f"{os.path.splitext(path)[1]}\0{text}".encode("utf-8", "surrogatepass"),
                          digest_size=16).digest()
    found = _memo.get(key, _MISSING)
    if found is _MISSING:
        found = _scrub_lines(text, path)
        found = None if found is text else found
        with _memo_lock:
            _memo[key] = found
            while len(_memo) > MEMO_ENTRIES:
                _memo.pop(next(iter(_memo)))
    return text if found is None else found


def _has_key_block(text: str) -> bool:
    return any(p.search(text) for p in _PRIVATE_KEY.denylist)


def _scrub_lines(text: str, path: str) -> str:
    """_scrub(text, path), scanning only the lines that the path's recent texts did not have."""
    lines = text.split("\n")
    with _memo_lock:
        known = _recent.get(path)
        if known is not None:
            _recent.move_to_end(path)
        known = dict(known) if isinstance(known, dict) else known  # (a copy: other threads scrub too)
    if known is _WHOLE:
        return _scrub(text, path)
    if known is None:
        known = {}
    unique = dict.fromkeys(lines)
    todo = [line for line in unique if line not in known]
    if known and len(todo) == len(unique):
        known = {}  # nothing in common with the path's recent texts: start its map again
    batch = "\n".join(todo)
    if _has_key_block(batch):  # a block is masked across lines: this path is scrubbed whole from now on
        result = _scrub(text, path)
        known = _WHOLE
    else:
        masked = _scrub(batch, path).split("\n") if todo else []
        for line, mask in zip(todo, masked, strict=True):  # (masks keep the line count)
            known[line] = None if mask == line else mask
        masks = [known[line] for line in lines]
        result = "\n".join(m or line for m, line in zip(masks, lines)) if any(masks) else text
        if len(known) > 4 * len(lines) + 1000:  # edited far from what it was: keep the present text's lines only
            known = {line: known[line] for line in lines}
    with _memo_lock:
        _recent[path] = known
        _recent.move_to_end(path)
        while len(_recent) > RECENT_PATHS:
            _recent.popitem(last=False)
    return result


def _scrub(text: str, path: str) -> str:
    candidates: dict[int, set] = {}  # line -> the plugins to ask
    lowered = None
    for trigger, lower, plugins in _TRIGGERS:
        if lower and lowered is None:
            lowered = text.lower()
        haystack = lowered if lower else text
        starts = None  # (the lowercased text may differ in length, never in its line breaks)
        for m in trigger.finditer(haystack):
            if starts is None:
                starts = [0] + [n.end() for n in _NEWLINE.finditer(haystack)]
            candidates.setdefault(bisect.bisect_right(starts, m.start()) - 1, set()).update(plugins)
    if not candidates:
        return text
    if any(p.search(text) for p in _PRIVATE_KEY.denylist):  # a block spans lines: masked as a whole
        text = _mask_pem(text)
    lines = text.split("\n")
    changed = False
    for i, plugins in sorted(candidates.items()):
        if i < len(lines) and len(lines[i]) < 4096:
            new = _mask_line(lines[i], path, plugins)
            if new != lines[i]:
                lines[i] = new
                changed = True
    return "\n".join(lines) if changed else text
