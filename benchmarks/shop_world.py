"""The shop the outcome benchmark simulates: five hidden personas whose plan and
device give them away only in part, 20 offers over three placements with
hidden click and purchase rates per persona and device, a drift half way, and
the people and visits that walk through it. Pure numpy and seeded: the same
seed gives the same world, people, visits and coin flips, so every policy
meets exactly the same visitors (common random numbers) and a difference
between two policies comes from their choices, not from luck."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import yaml

PLACEMENTS = ("home_hero", "product_page", "checkout")
ARBITRATED = PLACEMENTS[:2]  # where a policy has a choice; checkout holds the hold-out offer alone
CHECKOUT = PLACEMENTS.index("checkout")
DEVICES = ("mobile", "desktop")
PLANS = ("free", "basic", "pro", "team", "business")
PERSONAS = ("bargain_hunter", "solo_pro", "team_lead", "student", "enterprise_buyer")
PERSONA_SHARE = np.array([0.25, 0.2, 0.2, 0.2, 0.15])
TYPICAL_PLAN = np.array([PLANS.index(p) for p in ("free", "pro", "team", "basic", "business")])
MOBILE_SHARE = np.array([0.75, 0.4, 0.35, 0.8, 0.2])
PRICE_SENSITIVE = np.array([True, False, False, True, False])
PLAN_FIDELITY = 0.7  # a person's plan is their persona's typical one this often
BEST_OVER_SECOND = 1.2  # per persona and device, the best offer earns this much more than the next
DRIFT_AT = 0.5  # share of the visits after which the two drifting offers swap their rates


@dataclass(frozen=True)
class Offer:
    """An offer as the marketer declares it. `worth` is what a conversion leaves
    the shop: the price, less the discount for a discount offer."""

    id: str
    placement: str
    kind: str
    price: float
    discount_pct: int = 0
    plans: tuple[str, ...] | None = None  # shown only to these plans (a `when` in the catalog)
    devices: tuple[str, ...] | None = None
    holdout: int = 0

    @property
    def worth(self) -> float:
        return self.price * (1 - self.discount_pct / 100)

    @property
    def code(self) -> str | None:
        return f"{self.id.upper()}{self.discount_pct}" if self.discount_pct else None


OFFERS = (
    Offer("enterprise_demo", "home_hero", "banner", 80, plans=("team", "business")),
    Offer("pro_upgrade", "home_hero", "banner", 70, plans=("free", "basic")),
    Offer("annual_plan", "home_hero", "banner", 60),
    Offer("team_seats", "home_hero", "banner", 55, plans=("pro", "team", "business")),
    Offer("bundle_offer", "home_hero", "banner", 45),
    Offer("spring_sale", "home_hero", "discount", 50, discount_pct=20),
    Offer("student_deal", "home_hero", "discount", 60, discount_pct=30, plans=("free", "basic")),
    Offer("app_install", "home_hero", "content", 25, devices=("mobile",)),
    Offer("webinar", "home_hero", "content", 20),
    Offer("premium_support", "product_page", "banner", 65, plans=("pro", "team", "business")),
    Offer("flash_sale", "product_page", "discount", 70, discount_pct=25),
    Offer("addon_analytics", "product_page", "banner", 50),
    Offer("integrations_pack", "product_page", "banner", 45),
    Offer("training_course", "product_page", "banner", 40),
    Offer("loyalty_discount", "product_page", "discount", 40, discount_pct=15),
    Offer("addon_storage", "product_page", "banner", 35),
    Offer("mobile_app_pro", "product_page", "banner", 30, devices=("mobile",)),
    Offer("referral_bonus", "product_page", "content", 20),
    Offer("case_study", "product_page", "content", 15),
    Offer("easy_returns", "checkout", "banner", 40, holdout=10),
)
HOLDOUT_OFFER = next(i for i, offer in enumerate(OFFERS) if offer.holdout)


class World:
    """Hidden rates, indexed [phase, persona, device, offer] (phase 1 after the
    drift), and what each oracle would show, indexed by what it can see."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.worth = np.array([offer.worth for offer in OFFERS])
        self.placement_of = np.array([PLACEMENTS.index(offer.placement) for offer in OFFERS])
        self.eligible = _eligibility()  # [plan, device, offer]
        # Buying with no offer shown: a trickle while browsing, more at checkout.
        self.browse_base = rng.uniform(0.002, 0.003, (len(PERSONAS), len(DEVICES)))
        self.checkout_base = rng.uniform(0.02, 0.03, (len(PERSONAS), len(DEVICES)))
        buy = _purchase_rates(rng, self.worth, self.placement_of, self.browse_base)
        buy[:, :, HOLDOUT_OFFER] = self.checkout_base + np.where(
            PRICE_SENSITIVE[:, None], rng.uniform(0.015, 0.02, self.checkout_base.shape),
            rng.uniform(0.005, 0.01, self.checkout_base.shape))
        # Clicks follow purchases loosely, around a banner log's 0.4 %.
        click = np.clip(0.004 * np.sqrt(buy / np.median(buy)) * rng.lognormal(0, 0.3, buy.shape), 0.002, 0.05)
        self.drift_pair = self._drifting_offers(buy)
        self.buy = np.stack([buy, self._swapped(buy)])
        self.click = np.stack([click, self._swapped(click)])
        self.posterior = _persona_posterior()  # [plan, device, persona]
        value = self.buy * self.worth  # [phase, persona, device, offer]
        self.persona_best = self._best(value[:, :, None, :, :])  # [phase, persona, plan, device]
        seen = np.einsum("lds,hsdo->hldo", self.posterior, value)
        self.context_best = self._best(seen)  # [phase, plan, device]

    def rates(self, visits: Visits, idx: np.ndarray, shown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Click and purchase probabilities of visits `idx` given the offers
        shown (-1: nothing, and people still buy now and then)."""
        phase = (idx >= DRIFT_AT * len(visits)).astype(int)
        persona, device = visits.persona[visits.person[idx]], visits.device[idx]
        offer = np.maximum(shown, 0)
        base = np.where(visits.placement[idx] == CHECKOUT, self.checkout_base[persona, device],
                        self.browse_base[persona, device])
        click = np.where(shown >= 0, self.click[phase, persona, device, offer], 0.0)
        buy = np.where(shown >= 0, self.buy[phase, persona, device, offer], base)
        return click, buy

    def value(self, visits: Visits, shown: np.ndarray) -> np.ndarray:
        """What each visit is expected to earn: purchase probability x worth."""
        _, buy = self.rates(visits, np.arange(len(visits)), shown)
        return np.where(shown >= 0, buy * self.worth[np.maximum(shown, 0)], 0.0)

    def context_oracle(self, visits: Visits) -> np.ndarray:
        """The best offer for what can be seen (plan, device), from the hidden
        rates; it switches at the drift."""
        phase = (np.arange(len(visits)) >= DRIFT_AT * len(visits)).astype(int)
        return self.context_best[visits.placement, phase, visits.plan[visits.person], visits.device]

    def persona_oracle(self, visits: Visits) -> np.ndarray:
        """The best offer for the person's hidden persona too."""
        phase = (np.arange(len(visits)) >= DRIFT_AT * len(visits)).astype(int)
        return self.persona_best[visits.placement, phase, visits.persona[visits.person],
                                 visits.plan[visits.person], visits.device]

    def random_policy(self, visits: Visits, seed: int) -> np.ndarray:
        """Any eligible offer of the placement, uniformly."""
        keys = np.random.default_rng(seed).random((len(visits), len(OFFERS)))
        allowed = (self.eligible[visits.plan[visits.person], visits.device]
                   & (self.placement_of[None, :] == visits.placement[:, None]))
        return np.where(allowed, keys, -1.0).argmax(axis=1)

    def _best(self, value: np.ndarray) -> np.ndarray:
        """Per placement, the eligible offer of the highest expected value: the
        last axes of `value` are [plan or 1, device, offer]; the answer gains a
        leading placement axis and loses the offer axis."""
        shape = np.broadcast_shapes(value.shape, (1,) * (value.ndim - 3) + self.eligible.shape)
        out = []
        for placement in range(len(PLACEMENTS)):
            mask = self.eligible & (self.placement_of == placement)
            out.append(np.where(np.broadcast_to(mask, shape), np.broadcast_to(value, shape), -1.0).argmax(-1))
        return np.stack(out)

    def _swapped(self, rates: np.ndarray) -> np.ndarray:
        """The drift: the two offers trade what they earn (a rate scaled by the
        ratio of their worths, so the cheap one does not become a gold mine)."""
        a, b = self.drift_pair
        after = rates.copy()
        after[..., a] = rates[..., b] * self.worth[b] / self.worth[a]
        after[..., b] = rates[..., a] * self.worth[a] / self.worth[b]
        return np.clip(after, 0.002, 0.05)

    def _drifting_offers(self, buy: np.ndarray) -> tuple[int, int]:
        """The home hero's offer that earns most across everyone, and one that
        earns little: swapping them forces a policy to notice the change."""
        mix = PERSONA_SHARE[:, None] * np.stack([MOBILE_SHARE, 1 - MOBILE_SHARE], axis=1)
        earned = np.einsum("sd,sdo->o", mix, buy) * self.worth
        hero = [i for i, offer in enumerate(OFFERS) if offer.placement == "home_hero"
                and offer.plans is None and offer.devices is None]
        ranked = sorted(hero, key=lambda i: -earned[i])
        return ranked[0], ranked[-1]


def _eligibility() -> np.ndarray:
    eligible = np.ones((len(PLANS), len(DEVICES), len(OFFERS)), dtype=bool)
    for o, offer in enumerate(OFFERS):
        for p, plan in enumerate(PLANS):
            for d, device in enumerate(DEVICES):
                eligible[p, d, o] = ((offer.plans is None or plan in offer.plans)
                                     and (offer.devices is None or device in offer.devices))
    return eligible


def _purchase_rates(rng: np.random.Generator, worth: np.ndarray, placement_of: np.ndarray,
                    base: np.ndarray) -> np.ndarray:
    """Per persona, device and placement, the offers take a random order (a
    discount rises for the price-sensitive personas and sinks for the others),
    the best earns BEST_OVER_SECOND times the second and the rest less still;
    purchase rates follow from the value over the worth, within 0.2 % and 5 %."""
    rates = np.zeros((len(PERSONAS), len(DEVICES), len(OFFERS)))
    discount = np.array([offer.discount_pct > 0 for offer in OFFERS])
    for s in range(len(PERSONAS)):
        for d in range(len(DEVICES)):
            for placement in range(len(ARBITRATED)):
                offers = np.flatnonzero(placement_of == placement)
                order_key = rng.random(len(offers)) + np.where(discount[offers], 0.8 if PRICE_SENSITIVE[s] else -0.8, 0)
                ranked = offers[np.argsort(-order_key)]
                top = rng.uniform(0.6, 1.2) * 0.008 * worth[offers].mean()
                values = np.concatenate([[top, top / BEST_OVER_SECOND],
                                         top / BEST_OVER_SECOND * rng.uniform(0.3, 0.8, len(ranked) - 2)])
                rates[s, d, ranked] = values / worth[ranked]
                if not PRICE_SENSITIVE[s]:  # a discount barely moves those who would buy anyway
                    for o in offers[discount[offers]]:
                        rates[s, d, o] = base[s, d] * rng.uniform(1.0, 1.2)
    return np.clip(rates, 0.002, 0.05)


def _persona_posterior() -> np.ndarray:
    """P(persona | plan, device), exactly as the people are drawn."""
    plan_given = np.full((len(PERSONAS), len(PLANS)), (1 - PLAN_FIDELITY) / (len(PLANS) - 1))
    plan_given[np.arange(len(PERSONAS)), TYPICAL_PLAN] = PLAN_FIDELITY
    device_given = np.stack([MOBILE_SHARE, 1 - MOBILE_SHARE], axis=1)
    joint = PERSONA_SHARE[None, None, :] * plan_given.T[:, None, :] * device_given.T[None, :, :]
    return joint / joint.sum(axis=2, keepdims=True)


@dataclass
class Visits:
    """Who visits which placement on what device, in time order, and the two
    coin flips of each visit (click, purchase): the same for every policy."""

    persona: np.ndarray  # per person
    plan: np.ndarray  # per person
    person: np.ndarray  # per visit, from here on
    placement: np.ndarray
    device: np.ndarray
    u_click: np.ndarray
    u_buy: np.ndarray

    def __len__(self) -> int:
        return len(self.person)


def draw_people(rng: np.random.Generator, n_people: int) -> tuple[np.ndarray, np.ndarray]:
    persona = rng.choice(len(PERSONAS), n_people, p=PERSONA_SHARE)
    other = (TYPICAL_PLAN[persona] + rng.integers(1, len(PLANS), n_people)) % len(PLANS)
    plan = np.where(rng.random(n_people) < PLAN_FIDELITY, TYPICAL_PLAN[persona], other)
    return persona, plan


def browsing_visits(seed: int, n_people: int, mean_visits: float) -> Visits:
    """Each person comes 1 + Poisson(mean - 1) times, to the home hero or a
    product page, their visits close together at a random point of the run."""
    rng = np.random.default_rng(seed)
    persona, plan = draw_people(rng, n_people)
    count = 1 + rng.poisson(mean_visits - 1, n_people)
    person = np.repeat(np.arange(n_people), count)
    nth = np.arange(len(person)) - np.repeat(np.cumsum(count) - count, count)
    gap = 0.3 / mean_visits / 100  # a person's visits span well under 1 % of the run
    when = rng.uniform(0, 1 - gap * count.max(), n_people)[person] + nth * gap
    order = np.argsort(when, kind="stable")
    return _visits(rng, persona, plan, person[order], rng.integers(0, len(ARBITRATED), len(person)))


def checkout_visits(seed: int, n_people: int) -> Visits:
    """One checkout visit per person: the hold-out offer's exposures."""
    rng = np.random.default_rng(seed)
    persona, plan = draw_people(rng, n_people)
    return _visits(rng, persona, plan, rng.permutation(n_people),
                   np.full(n_people, CHECKOUT))


def _visits(rng, persona, plan, person, placement) -> Visits:
    n = len(person)
    device = (rng.random(n) >= MOBILE_SHARE[persona[person]]).astype(int)  # 0 mobile, 1 desktop
    return Visits(persona, plan, person, placement, device, rng.random(n), rng.random(n))


def catalog_yaml(arbitration: str, learning: dict | None = None) -> str:
    """The catalog both API policies run: the marketer's static one ranks by
    declared worth (priority), Attimo's lets expected value choose, from the
    same propensity guess for every offer, so it starts where the marketer is."""
    placements = {name: {"description": f"shop {name}"} for name in PLACEMENTS}
    for name in ARBITRATED:
        placements[name]["arbitration"] = arbitration
    spec: dict = {"placements": placements, "offers": [_offer_spec(offer, arbitration) for offer in OFFERS]}
    if learning is not None:
        spec = {"learning": learning, **spec}
    return yaml.safe_dump(spec, sort_keys=False)


def _offer_spec(offer: Offer, arbitration: str) -> dict:
    content: dict = {"title": offer.id.replace("_", " ").capitalize()}
    if offer.code:
        content["code"] = offer.code
    spec: dict = {"id": offer.id, "kind": offer.kind, "placements": [offer.placement], "content": content,
                  "worth": round(offer.worth, 2)}
    if arbitration == "priority":
        spec["priority"] = int(round(offer.worth))
    else:
        spec["propensity"] = 0.01
    if offer.discount_pct:
        spec["value"] = offer.discount_pct
    conditions = []
    if offer.plans:
        conditions.append({"trait": "plan", "in": list(offer.plans)})
    if offer.devices:
        conditions.append({"context": "device", "in": list(offer.devices)})
    if conditions:
        spec["when"] = conditions[0] if len(conditions) == 1 else {"all": conditions}
    if offer.holdout:
        spec["holdout"] = offer.holdout
    return spec


def learning_block(half_life_s: int) -> dict:
    """The learning section: conversions as the reward, buckets of device and
    plan (3 x 6 = 18), a half-life scaled to the run's length, and 2 %
    exploration (Thompson sampling explores on its own: at purchase rates of a
    few percent, a larger uniform share costs more than it teaches; measured
    with an in-process replay of this world, 5 % lost about 3 points of
    oracle share at 100k people)."""
    return {
        "reward": "conversion",
        "half_life": f"{half_life_s}s",
        "exploration": 0.02,
        "prior_weight": 20,
        "buckets": [{"context": "device", "values": list(DEVICES)}, {"trait": "plan", "values": list(PLANS)}],
    }
