"""The grid: which points each curve has, in what order they run, and how big each one is.

Points run smallest-first across all curves (every curve gets its small points before any
curve's largest), so a run that hits its time budget loses the largest points, each with
a note, rather than whole curves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eval.scaling.worker import PointSpec

SCAN_CANARIES = (1, 4, 16, 64)
SCRUB_SECRETS = (1, 4, 16)
SCRUB_DOCS = (1, 8, 32)
SCRUB_METHODS = ("iterative", "first-order")
"""The default method, and the fastest one (which does *not* meet the fidelity bounds: README)."""


@dataclass
class GridSettings:
    models: tuple[str, ...] = ("demo", "10m", "smollm2")
    scan_canaries: tuple[int, ...] = SCAN_CANARIES
    scan_references: int = 32
    scrub_methods: tuple[str, ...] = SCRUB_METHODS
    scrub_secrets: tuple[int, ...] = SCRUB_SECRETS
    scrub_docs: tuple[int, ...] = SCRUB_DOCS
    scrub_references: int = 32
    scrub_steps: int = 6
    scrub_model: str = "demo"

    @classmethod
    def quick(cls) -> "GridSettings":
        return cls(models=("demo",), scan_canaries=(1, 4), scrub_secrets=(1, 2), scrub_docs=(1, 2), scrub_steps=2)


@dataclass
class GridPoint:
    id: str
    family: str
    """Points of one family share a cost model (one scan model, one scrub method)."""
    spec: PointSpec
    units: float
    """Work in the family's units (canaries; secrets x documents + secrets), for predictions."""
    rank: int = 0
    curves: list[str] = field(default_factory=list)


def scan_points(g: GridSettings, dirs: dict[str, str], device: str) -> list[GridPoint]:
    out = []
    for model in g.models:
        for r, n in enumerate(sorted(g.scan_canaries)):
            spec = PointSpec(kind="scan", model=model, model_dir=dirs[model], device=device, n_canaries=n,
                             n_references=g.scan_references)
            out.append(GridPoint(f"scan/{model}/n={n}", f"scan/{model}", spec, float(n), r, [f"scan/{model}"]))
    return out


def scrub_points(g: GridSettings, dirs: dict[str, str], data: dict[str, str], device: str) -> list[GridPoint]:
    out = []
    cells = sorted(((s, k) for s in g.scrub_secrets for k in g.scrub_docs), key=lambda sk: (sk[0] * sk[1], sk))
    for method in g.scrub_methods:
        for r, (s, k) in enumerate(cells):
            spec = PointSpec(kind="scrub", model=g.scrub_model, model_dir=dirs[g.scrub_model], device=device,
                             n_canaries=s, docs_per_secret=k, method=method, n_references=g.scrub_references,
                             max_steps=g.scrub_steps, eval_data=data["eval"], retain_data=data["retain"])
            curves = [f"scrub/{method}/vs-secrets/docs={k}", f"scrub/{method}/vs-docs/secrets={s}"]
            out.append(GridPoint(f"scrub/{method}/s={s},k={k}", f"scrub/{method}", spec, float(s * k + s), r, curves))
    return out


def ordered(points: list[GridPoint]) -> list[GridPoint]:
    return sorted(points, key=lambda p: (p.rank, p.family))
