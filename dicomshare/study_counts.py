"""Study and series counts as deltas: new instance items grouped per study and series.

The counts aggregator (:mod:`dicomshare_aws.counts`) reads new instance items from the
table's stream and applies one :class:`StudyDelta` per study (per chunk of at most
``max_items`` transaction items) instead of one write per instance. The deltas are
computed from the instance items alone: every instance item repeats the de-identified
study and series attributes (:func:`dicomshare.index_items.instance_item`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from dicomshare import index


@dataclass
class SeriesDelta:
    series_uid: str
    modality: str
    series_description: str
    series_number: str
    instance_count: int = 0
    total_bytes: int = 0


@dataclass
class StudyDelta:
    """What a set of newly counted instances adds to one study and its series."""

    study_uid: str
    partner: str
    patient_pseudonym: str
    study_date: str
    study_time: str
    study_description: str
    first_received: str
    last_received: str
    instances: list[Mapping[str, Any]] = field(default_factory=list)
    series: dict[str, SeriesDelta] = field(default_factory=dict)
    modalities: set[str] = field(default_factory=set)
    instance_count: int = 0
    total_bytes: int = 0

    @property
    def instance_keys(self) -> list[dict[str, str]]:
        return [{index.PK: i[index.PK], index.SK: i[index.SK]} for i in self.instances]

    @property
    def transaction_items(self) -> int:
        """Items a transaction applying this delta writes: instances, series, the study."""
        return len(self.instances) + len(self.series) + 1


def is_instance_item(item: Mapping[str, Any]) -> bool:
    return (str(item.get(index.PK, "")).startswith(index.INSTANCES)
            and str(item.get(index.SK, "")).startswith("INSTANCE#"))


def _start(item: Mapping[str, Any]) -> StudyDelta:
    return StudyDelta(
        study_uid=item["study_uid"],
        partner=item.get("partner", ""),
        patient_pseudonym=item.get("patient_pseudonym", ""),
        study_date=item.get("study_date", ""),
        study_time=item.get("study_time", ""),
        study_description=item.get("study_description", ""),
        first_received=item["received_at"],
        last_received=item["received_at"],
    )


def _add(delta: StudyDelta, item: Mapping[str, Any], keep: bool = True) -> None:
    size = int(item["size"])
    series = delta.series.get(item["series_uid"])
    if series is None:
        series = delta.series[item["series_uid"]] = SeriesDelta(
            series_uid=item["series_uid"],
            modality=item.get("modality", ""),
            series_description=item.get("series_description", ""),
            series_number=item.get("series_number", ""),
        )
    series.instance_count += 1
    series.total_bytes += size
    if keep:
        delta.instances.append(item)
    delta.instance_count += 1
    delta.total_bytes += size
    if item.get("modality"):
        delta.modalities.add(item["modality"])
    delta.first_received = min(delta.first_received, item["received_at"])
    delta.last_received = max(delta.last_received, item["received_at"])


def study_deltas(instance_items: Iterable[Mapping[str, Any]], max_items: int = 100) -> list[StudyDelta]:
    """Deltas of the given instance items, per study, each within ``max_items``
    transaction items (DynamoDB TransactWriteItems takes at most 100).

    An instance delivered twice in ``instance_items`` counts once. Items are ordered by
    key, so a chunk holds few series.
    """
    unique = {(i[index.PK], i[index.SK]): i for i in instance_items}
    deltas: list[StudyDelta] = []
    current: StudyDelta | None = None
    for key in sorted(unique):
        item = unique[key]
        grows = 1 if current is not None and item["series_uid"] in current.series else 2
        if current is None or current.study_uid != item["study_uid"] or current.transaction_items + grows > max_items:
            current = _start(item)
            deltas.append(current)
        _add(current, item)
    return deltas


def recount(instance_items: Iterable[Mapping[str, Any]]) -> StudyDelta | None:
    """The totals of *all* instance items of one study (``None`` for none), as a delta
    from zero, without keeping the items: what the study's and series' items should say
    (reconciliation, :mod:`dicomshare_aws.reconcile`). Each item is expected once."""
    delta: StudyDelta | None = None
    for item in instance_items:
        if delta is None:
            delta = _start(item)
        _add(delta, item, keep=False)
    return delta
