"""Model cards (README.md with YAML front matter) generated from a checkpoint's config.

The card is derived from ``config.json`` only, so it can be regenerated at any time (``push`` does
so before every upload) and never disagrees with the weights it describes.
"""

from __future__ import annotations

from typing import Any

import yaml

TASK = {"type": "image-segmentation", "name": "Semantic segmentation"}


def _numeric_metrics(metrics: Any) -> dict[str, dict[str, float]]:
    """``{split: {metric: value}}`` keeping finite numbers only."""
    if not isinstance(metrics, dict):
        return {}
    out: dict[str, dict[str, float]] = {}
    for split, values in metrics.items():
        if not isinstance(values, dict):
            continue
        kept = {str(k): float(v) for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
        if kept:
            out[str(split)] = kept
    return out


def _front_matter(config: dict[str, Any], title: str) -> dict[str, Any]:
    model = config.get("model") or {}
    method = str(config.get("method") or "finetune")
    tags = ["segcl", "semantic-segmentation", method]
    tags += [str(model[k]) for k in ("encoder", "decoder") if model.get(k)]
    front: dict[str, Any] = {
        "library_name": "segcl",
        "pipeline_tag": "image-segmentation",
        "tags": list(dict.fromkeys(tags)),
    }
    dataset = config.get("dataset")
    if dataset:
        front["datasets"] = [str(dataset)]
    metrics = _numeric_metrics(config.get("metrics"))
    if metrics:
        front["metrics"] = sorted({k for values in metrics.values() for k in values})
        if dataset:
            front["model-index"] = [{
                "name": title,
                "results": [
                    {
                        "task": dict(TASK),
                        "dataset": {"name": str(dataset), "type": str(dataset), "split": split},
                        "metrics": [{"type": k, "name": k, "value": round(v, 6)}
                                    for k, v in values.items()],
                    }
                    for split, values in metrics.items()
                ],
            }]
    return front


def _encoder_weights(config: dict[str, Any]) -> str | None:
    """Where the encoder started: ``imagenet (timm/resnet18.a1_in1k@<sha>)``, a file, ``random``;
    ``None`` when the config does not say (older checkpoints) or ``--init`` gave the weights."""
    if "encoder_weights" not in config:
        return None
    weights = config["encoder_weights"]
    if not isinstance(weights, dict):
        init = (config.get("train") or {}).get("init")
        return None if init else "random"
    where = weights.get("repo_id")
    if where and weights.get("revision"):
        where += f"@{str(weights['revision'])[:12]}"
    return f"{weights.get('source')}" + (f" ({where})" if where else "")


def _details(config: dict[str, Any]) -> list[str]:
    model = config.get("model") or {}
    data = config.get("data") or {}
    rows = [
        ("encoder (timm)", model.get("encoder")),
        ("encoder weights", _encoder_weights(config)),
        ("decoder", model.get("decoder")),
        ("classes", model.get("num_classes") or len(data.get("classes") or []) or None),
        ("input size (H x W)", " x ".join(map(str, data["image_size"]))
         if data.get("image_size") else None),
        ("normalisation mean", data.get("mean")),
        ("normalisation std", data.get("std")),
        ("ignore index", data.get("ignore_index")),
        ("training method", config.get("method")),
        ("dataset", config.get("dataset")),
        ("segcl version", config.get("segcl_version")),
    ]
    lines = ["| | |", "|---|---|"]
    lines += [f"| {name} | `{value}` |" for name, value in rows if value not in (None, "", [])]
    return lines


def render_model_card(
    config: dict[str, Any], *, repo_id: str | None = None, revision: str | None = None
) -> str:
    """Return a model card for a checkpoint described by its ``config.json`` dictionary.

    Args:
        config: the checkpoint's ``config.json`` content.
        repo_id: the Hub repository the card is published in (used in the usage example).
        revision: a commit sha or tag to pin in the usage example.

    The text encodes as UTF-8 (a path that is not valid UTF-8 is shown with ``\\udcXX``
    escapes).
    """
    model = config.get("model") or {}
    data = config.get("data") or {}
    encoder, decoder = model.get("encoder", "?"), model.get("decoder", "?")
    method = config.get("method") or "finetune"
    dataset = config.get("dataset")
    title = repo_id.split("/")[-1] if repo_id else f"{encoder}-{decoder}-{method}" + (
        f"-{dataset}" if dataset else "")
    front = _front_matter(config, title)

    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", ""]
    lines.append(f"# {title}")
    lines.append("")
    on = f" on {dataset}" if dataset else ""
    lines.append(
        f"A semantic segmentation model: a `{encoder}` encoder (timm) with a `{decoder}` decoder, "
        f"trained{on} with segcl's `{method}` method (segcl {config.get('segcl_version', '?')})."
    )
    lines += ["", "## Model details", "", *_details(config)]
    if config.get("command"):
        lines += ["", "## How it was trained", "",
                  "The exact command (run it again to rebuild this checkpoint):", "",
                  "```bash", str(config["command"]), "```"]
    metrics = _numeric_metrics(config.get("metrics"))
    if metrics:
        lines += ["", "## Results", "", "| split | metric | value |", "|---|---|---|"]
        for split, values in metrics.items():
            for key, value in values.items():
                lines.append(f"| {split} | {key} | {value:.4f} |")
    classes = data.get("classes") or []
    if classes:
        lines += ["", f"## Classes ({len(classes)})", "",
                  ", ".join(f"{i}: {name}" for i, name in enumerate(classes))]
    ref = "PATH_TO_THIS_CHECKPOINT"
    if repo_id:
        ref = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    lines += [
        "", "## Usage", "",
        "```bash",
        "pip install segcl",
        f"segcl predict {ref} images/ --out masks/",
        "```",
        "",
        "Pin a commit sha (`hf://user/name@<sha>`) to always get these exact weights.",
        "",
        "## Files", "",
        "- `model.safetensors`: the weights (safetensors: loading never executes code)",
        "- `config.json`: everything needed to rebuild the model (architecture, classes, "
        "normalisation, metrics)",
        "- `README.md`: this card, generated from `config.json`",
        "",
    ]
    # paths that are not valid UTF-8 (in the command) become \udcXX escapes: the card is UTF-8
    return "\n".join(lines).encode("utf-8", "backslashreplace").decode("utf-8")
