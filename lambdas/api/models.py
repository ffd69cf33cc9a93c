"""Request bodies and parameters of the API (pydantic; Powertools validates them and
publishes them in the OpenAPI document at ``GET /openapi.json``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dicomshare.shares import MIN_PIN_LENGTH, pin_weakness

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
"""PS3.5 9.1: a UID is dot-separated numbers, at most 64 characters."""

SHARE_ID_PATTERN = r"^[0-9a-f]{16}$"


class CreateShare(BaseModel):
    """``POST /shares``: share one study (and optionally the patient's earlier studies)."""

    model_config = ConfigDict(extra="forbid")

    study_uid: str = Field(pattern=UID_PATTERN, max_length=64, description="De-identified StudyInstanceUID")
    expires_in: int | None = Field(
        default=None, description="Lifetime in seconds, within the configured share_min/max_seconds"
    )
    pin: str | None = Field(default=None, max_length=64, description=(
        f"Optional PIN the clinician must enter: at least {MIN_PIN_LENGTH} characters, not one character "
        "repeated, not a run such as 123456"))
    generate_pin: bool = Field(default=False, description="Let the server choose a random 8-digit PIN, "
                               "returned once in the response (instead of pin)")
    recipient: str = Field(default="", max_length=200, description="Label for the recipient (shown in listings)")
    max_redemptions: int | None = Field(default=None, ge=1, le=1_000_000)
    allow_download: bool = Field(default=True, description="False gives a view-only share: previews, no DICOM URLs")
    include_priors: bool = Field(default=False, description="Also share the same patient's earlier studies")

    @field_validator("pin")
    @classmethod
    def strong_pin(cls, pin: str | None) -> str | None:
        weakness = pin_weakness(pin) if pin is not None else None
        if weakness:
            raise ValueError(weakness)
        return pin

    @model_validator(mode="after")
    def one_pin_source(self) -> "CreateShare":
        if self.pin is not None and self.generate_pin:
            raise ValueError("pin: give a pin or generate_pin, not both")
        return self


class CreatedShare(BaseModel):
    share_id: str
    token: str = Field(description="Shown once; stored only as its SHA-256 hash")
    url: str = Field(description="The clinician link: <api>/view#<token>")
    expires_at: str
    study_uids: list[str]
    pin: str | None = Field(default=None, description="The server-generated PIN (generate_pin), shown once")
