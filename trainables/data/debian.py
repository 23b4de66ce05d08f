"""Which Debian package versions an optional domain was built from (read from dpkg's status file,
without running dpkg: slim images and containers may lack dpkg-query but keep the file)."""

from __future__ import annotations

from pathlib import Path

DPKG_STATUS = Path("/var/lib/dpkg/status")


def installed_versions(packages: list[str], status_file: Path | None = None) -> dict[str, str | None]:
    """``{package: version}`` for each package dpkg lists as installed; None for the others."""
    wanted = dict.fromkeys(packages)
    try:
        text = (status_file or DPKG_STATUS).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return dict(wanted)
    for paragraph in text.split("\n\n"):
        fields = {}
        for line in paragraph.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith((" ", "\t")):
                fields[key.strip()] = value.strip()
        name = fields.get("Package")
        if name in wanted and fields.get("Status", "").endswith(" installed"):
            wanted[name] = fields.get("Version")
    return dict(wanted)


def provenance(packages: list[str], status_file: Path | None = None) -> list[dict]:
    """One row per package, as ``data describe`` prints a domain's sources."""
    return [{"package": p, "version": v or "not installed", "source": "Debian"}
            for p, v in installed_versions(packages, status_file).items()]
