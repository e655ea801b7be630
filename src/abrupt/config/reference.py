"""Every configuration key with its type, default and meaning, from the schema's field docs: what
`abrupt train --help` and `abrupt presets` print and docs/configuration.md holds
(`python -m abrupt.config.reference > docs/configuration.md` regenerates it; a test keeps it so)."""

from __future__ import annotations

import textwrap

from .presets import DEFAULT_PRESET, PRESETS
from .schema import field_docs, section_names


def keys_text(width: int = 100) -> str:
    """Plain text, one block per section: `key=default  meaning`, wrapped to `width`."""
    lines = []
    docs = field_docs()
    for section in ("", *section_names()):
        keys = [k for k in docs if (k.partition(".")[0] == section if section else "." not in k)]
        lines.append(f"{section or 'run'}:")
        for key in keys:
            typ, default, meaning = docs[key]
            head = f"  {key}={default!r}" if typ in ("str", "list") else f"  {key}={default}"
            lines += textwrap.wrap(f"{head} ({typ})  {meaning}", width, subsequent_indent="      ")
    return "\n".join(lines)


def markdown() -> str:
    """docs/configuration.md."""
    out = [
        "# Configuration",
        "",
        "Every key a run depends on, with its type, its default (the paper's value) and what it "
        "means.",
        "Set one with `section.key=value` after `abrupt train` (or in a sweep spec); a preset",
        "(`--preset NAME`) is a named set of such values over these defaults. Each run writes the",
        "resolved values to `RUN/config.json`. Generated from the schema "
        "(`src/abrupt/config/schema.py`)",
        "by `python -m abrupt.config.reference > docs/configuration.md`.",
        "",
    ]
    docs = field_docs()
    for section in ("", *section_names()):
        keys = [k for k in docs if (k.partition(".")[0] == section if section else "." not in k)]
        out += [
            f"## {section or 'run'}",
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        for key in keys:
            typ, default, meaning = docs[key]
            out.append(f"| `{key}` | {typ} | `{default!r}` | {meaning.replace('|', '/')} |")
        out.append("")
    out += ["## Presets", "", "| preset | what it is |", "|---|---|"]
    out += [
        f"| `{name}`{' (default)' if name == DEFAULT_PRESET else ''} | {desc} |"
        for name, (desc, _) in PRESETS.items()
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
