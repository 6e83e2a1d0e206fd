"""The admin API's bodies: what `/v1/admin/...` accepts and returns, for gateway and CLI."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.tiers import Budgets, CachePolicy, Limits, Tier

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                         "or digit")
    return value


class TenantCreate(_Body):
    tenant: str
    name: str | None = None
    default_tier: Tier = "free"
    budgets: Budgets = Field(default=Budgets(),
                             description="Quotas and budgets each new key of the tenant gets.")
    cache: CachePolicy = Field(default=CachePolicy(),
                               description="The response cache for keys that set none.")

    _tenant = field_validator("tenant")(_check_name)


class TenantUpdate(_Body):
    name: str | None = None
    default_tier: Tier | None = None
    budgets: Budgets | None = None
    cache: CachePolicy | None = None
    disabled: bool | None = None


class KeyCreate(_Body):
    tenant: str
    name: str | None = None
    tier: Tier | None = Field(default=None, description="The tenant's default tier if unset.")
    limits: Limits = Limits()
    budgets: Budgets | None = Field(default=None,
                                    description="The tenant's default budgets if unset.")
    cache: CachePolicy | None = Field(default=None, description="The tenant's if unset.")

    _tenant = field_validator("tenant")(_check_name)


class KeyUpdate(_Body):
    name: str | None = None
    tier: Tier | None = None
    limits: Limits | None = None
    budgets: Budgets | None = None
    cache: CachePolicy | None = None


class KeyView(BaseModel):
    """A key as the admin API shows it; `secret` appears only in the answer to create."""

    key_id: str
    tenant: str
    name: str | None
    tier: Tier
    limits: Limits = Field(description="The limits in force: tier defaults plus overrides.")
    overrides: Limits
    budgets: Budgets
    cache: CachePolicy | None = Field(description="Its own; the tenant's applies if None.")
    revoked: bool
    created_at: float
    version: int
    secret: str | None = None


Micros = Annotated[int, Field(ge=0)]


class PriceSet(_Body):
    """A model's price in integer micro-dollars per million tokens."""

    input_micros_per_million: Micros
    output_micros_per_million: Micros
    cached_micros_per_million: Micros | None = Field(
        default=None, description="The input price if unset.")
    cache_hit_micros_per_million: Micros = Field(
        default=0, description="For each token of an answer served from the response cache.")
    effective_from: float | None = Field(default=None, description="Now if unset (Unix s).")


class ExperimentCreate(_Body):
    name: str
    model_a: str
    model_b: str
    split: float = Field(ge=0, le=100, description="Percent of callers sent to model_b.")

    _name = field_validator("name")(_check_name)


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
