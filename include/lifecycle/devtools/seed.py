"""Deterministic, realistic demo data: customers and their orders, bulk-loaded.

Same `seed` and `as_of` give the same rows. The population is shaped like a real shop's:
English, Armenian and Georgian customers with native-script names, timezones from UTC-11 to
UTC+14, birthdays including 29 February, three years of signups with a fresh cohort in the last
days, Pareto-shaped order histories (many one-time buyers, lapsed customers, a loyal core), and
the bad rows every warehouse has: no consent, malformed emails, missing first names, a timezone
that does not exist.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, delete, func, select

from lifecycle.store import schema, warehouse

EN_FIRST = """Olivia Liam Emma Noah Ava Oliver Sophia James Isabella William Mia Lucas Amelia
Henry Charlotte Ethan Harper Jack Grace Leo"""
EN_LAST = """Smith Johnson Williams Brown Jones Garcia Miller Davis Wilson Taylor Anderson Thomas
Moore Martin Clark Lewis"""
NAMES: dict[str, dict[str, list[tuple[str, str]]]] = {
    # (native, latin) pairs; latin is only used to make plausible email addresses.
    "en": {
        "first": [(n, n) for n in EN_FIRST.split()],
        "last": [(n, n) for n in EN_LAST.split()],
    },
    "hy": {
        "first": [
            ("Արամ", "Aram"),
            ("Անի", "Ani"),
            ("Դավիթ", "Davit"),
            ("Մարիամ", "Mariam"),
            ("Նարեկ", "Narek"),
            ("Լիլիթ", "Lilit"),
            ("Հայկ", "Hayk"),
            ("Սոնա", "Sona"),
            ("Տիգրան", "Tigran"),
            ("Նունե", "Nune"),
            ("Արմեն", "Armen"),
            ("Գայանե", "Gayane"),
            ("Վահե", "Vahe"),
            ("Աննա", "Anna"),
            ("Գոռ", "Gor"),
            ("Էլեն", "Elen"),
            ("Սարգիս", "Sargis"),
            ("Մանե", "Mane"),
        ],
        "last": [
            ("Պետրոսյան", "Petrosyan"),
            ("Հովհաննիսյան", "Hovhannisyan"),
            ("Սարգսյան", "Sargsyan"),
            ("Գրիգորյան", "Grigoryan"),
            ("Կարապետյան", "Karapetyan"),
            ("Ավետիսյան", "Avetisyan"),
            ("Մկրտչյան", "Mkrtchyan"),
            ("Հարությունյան", "Harutyunyan"),
            ("Վարդանյան", "Vardanyan"),
            ("Խաչատրյան", "Khachatryan"),
        ],
    },
    "ka": {
        "first": [
            ("გიორგი", "Giorgi"),
            ("ნინო", "Nino"),
            ("დავით", "Davit"),
            ("მარიამ", "Mariam"),
            ("ლუკა", "Luka"),
            ("ანა", "Ana"),
            ("ნიკა", "Nika"),
            ("თამარ", "Tamar"),
            ("ლევან", "Levan"),
            ("ელენე", "Elene"),
            ("ირაკლი", "Irakli"),
            ("სალომე", "Salome"),
            ("ზურაბ", "Zurab"),
            ("ქეთევან", "Ketevan"),
            ("მაკა", "Maka"),
        ],
        "last": [
            ("ბერიძე", "Beridze"),
            ("მაისურაძე", "Maisuradze"),
            ("კაპანაძე", "Kapanadze"),
            ("გელაშვილი", "Gelashvili"),
            ("ლომიძე", "Lomidze"),
            ("ჯავახიშვილი", "Javakhishvili"),
            ("ხარაიშვილი", "Kharaishvili"),
            ("წიკლაური", "Tsiklauri"),
            ("ნოზაძე", "Nozadze"),
            ("ჩხეიძე", "Chkheidze"),
        ],
    },
}

# Per locale: (timezone, weight). English speakers live everywhere, including both ends of the
# clock: Kiritimati (UTC+14) and Pago Pago (UTC-11).
TIMEZONES: dict[str, list[tuple[str, float]]] = {
    "en": [
        ("America/New_York", 0.22),
        ("America/Los_Angeles", 0.14),
        ("Europe/London", 0.16),
        ("Europe/Berlin", 0.08),
        ("Australia/Sydney", 0.08),
        ("Asia/Tokyo", 0.05),
        ("Asia/Kolkata", 0.07),
        ("America/Sao_Paulo", 0.06),
        ("UTC", 0.04),
        ("Pacific/Kiritimati", 0.05),
        ("Pacific/Pago_Pago", 0.05),
    ],
    "hy": [("Asia/Yerevan", 0.8), ("Europe/Moscow", 0.08), ("America/Los_Angeles", 0.12)],
    "ka": [("Asia/Tbilisi", 0.85), ("Europe/Berlin", 0.05), ("America/New_York", 0.10)],
}
LOCALE_WEIGHTS = {"en": 0.5, "hy": 0.25, "ka": 0.25}
MALFORMED_EMAILS = [
    "",
    "no-at-sign.example.com",
    "two@@example.com",
    "trailing@",
    "@example.com",
    "spaces in@example.com",
]
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.000000"  # SQLAlchemy's SQLite DATETIME storage format


@dataclass(frozen=True)
class SeedResult:
    customers: int
    orders: int
    as_of: datetime


def _choice(rng: np.random.Generator, options: list[tuple[str, float]], n: int) -> np.ndarray:
    names = np.array([name for name, _ in options], dtype=object)
    weights = np.array([w for _, w in options])
    return rng.choice(names, size=n, p=weights / weights.sum())


def generate_customers(n: int, rng: np.random.Generator, as_of: datetime) -> pd.DataFrame:
    ids = np.arange(1, n + 1, dtype=np.int64)
    locales = rng.choice(list(LOCALE_WEIGHTS), size=n, p=list(LOCALE_WEIGHTS.values()))
    first = np.empty(n, dtype=object)
    last = np.empty(n, dtype=object)
    email_first = np.empty(n, dtype=object)
    email_last = np.empty(n, dtype=object)
    timezones = np.empty(n, dtype=object)
    for locale in LOCALE_WEIGHTS:
        mask = locales == locale
        k = int(mask.sum())
        firsts = NAMES[locale]["first"]
        lasts = NAMES[locale]["last"]
        fi = rng.integers(0, len(firsts), k)
        li = rng.integers(0, len(lasts), k)
        first[mask] = np.array([f[0] for f in firsts], dtype=object)[fi]
        email_first[mask] = np.array([f[1] for f in firsts], dtype=object)[fi]
        last[mask] = np.array([x[0] for x in lasts], dtype=object)[li]
        email_last[mask] = np.array([x[1] for x in lasts], dtype=object)[li]
        timezones[mask] = _choice(rng, TIMEZONES[locale], k)
    domains = rng.choice(np.array(["example.com", "example.net", "example.org"]), size=n)
    emails = np.array(
        [
            f"{f}.{la}.{i}@{d}".lower()
            for f, la, i, d in zip(email_first, email_last, ids, domains, strict=True)
        ],
        dtype=object,
    )
    bad_email = rng.random(n) < 0.002
    emails[bad_email] = rng.choice(np.array(MALFORMED_EMAILS, dtype=object), int(bad_email.sum()))
    emails[rng.random(n) < 0.001] = None
    first[rng.random(n) < 0.01] = None
    timezones[rng.random(n) < 0.0005] = "Mars/Olympus_Mons"

    # Ages 18-80; about 1 in 1,000 born on 29 February of a leap year.
    today = as_of.date()
    birth = pd.to_datetime(today) - pd.to_timedelta(rng.integers(18 * 365, 80 * 365, n), "D")
    birth_days = birth.to_numpy(dtype="datetime64[D]")
    leap = rng.random(n) < 0.001
    leap_years = rng.choice(np.arange(1948, 2005, 4), int(leap.sum()))
    birth_days[leap] = np.array([np.datetime64(f"{y}-02-29") for y in leap_years])
    birth_dates = np.datetime_as_string(birth_days, unit="D").astype(object)
    birth_dates[rng.random(n) < 0.05] = None  # ISO text: loads as DATE on both backends

    # Three years of signups, plus a fresh cohort in the last 8 days (onboarding).
    horizon = 3 * 365 * 86400
    age_s = rng.integers(0, horizon, n)
    fresh = rng.random(n) < 0.01
    age_s[fresh] = rng.integers(0, 8 * 86400, int(fresh.sum()))
    signup = np.datetime64(as_of.replace(tzinfo=None), "s") - age_s.astype("timedelta64[s]")

    return pd.DataFrame(
        {
            "id": ids,
            "email": emails,
            "first_name": first,
            "last_name": last,
            "locale": locales,
            "timezone": timezones,
            "birth_date": birth_dates,
            "signup_at": signup,
            "marketing_consent": rng.random(n) < 0.85,
            "loyalty_points": np.zeros(n, dtype=np.int64),
        }
    )


def generate_orders(
    customers: pd.DataFrame, rng: np.random.Generator, as_of: datetime
) -> pd.DataFrame:
    """Pareto-shaped histories: about two thirds never buy, many buy once, a loyal core often."""
    n = len(customers)
    counts = np.floor(rng.pareto(1.3, n) * 1.5).astype(np.int64)
    counts[rng.random(n) < 0.35] = 0
    counts = np.minimum(counts, 60)
    owner = np.repeat(np.arange(n), counts)
    signup = customers["signup_at"].to_numpy(dtype="datetime64[s]")[owner]
    now = np.datetime64(as_of.replace(tzinfo=None), "s")
    # Each customer stays active for a while, then some lapse: orders fall in their active span.
    lifetime = (now - customers["signup_at"].to_numpy(dtype="datetime64[s]")).astype(np.int64)
    active_share = np.where(rng.random(n) < 0.4, rng.random(n) * 0.6, 1.0)
    span = np.maximum((lifetime * active_share).astype(np.int64), 1)[owner]
    placed = signup + (rng.random(len(owner)) * span).astype("timedelta64[s]")
    delivery_delay = rng.integers(2 * 86400, 8 * 86400, len(owner)).astype("timedelta64[s]")
    delivered = placed + delivery_delay
    roll = rng.random(len(owner))
    status = np.where(roll < 0.05, "cancelled", np.where(roll < 0.09, "returned", "delivered"))
    status = np.where((delivered > now) & (status == "delivered"), "placed", status)
    delivered_at = pd.Series(delivered).where(np.isin(status, ["delivered", "returned"]))
    amount = np.round(np.exp(rng.normal(3.6, 0.7, len(owner))), 2)

    frame = pd.DataFrame(
        {
            "customer_id": customers["id"].to_numpy()[owner],
            "placed_at": placed,
            "delivered_at": delivered_at,
            "amount": amount,
            "currency": "USD",
            "status": status,
        }
    ).sort_values(["placed_at", "customer_id"], kind="stable", ignore_index=True)
    frame.insert(0, "id", np.arange(1, len(frame) + 1, dtype=np.int64))
    return frame


def _loyalty_points(customers: pd.DataFrame, orders: pd.DataFrame) -> np.ndarray:
    """Ten points per dollar of kept (not cancelled or returned) spend."""
    kept = orders[orders["status"].isin(["delivered", "placed"])]
    spend = kept.groupby("customer_id")["amount"].sum()
    return (spend.reindex(customers["id"]).fillna(0).to_numpy() * 10).astype(np.int64)


def generate(n: int, seed: int, as_of: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    customers = generate_customers(n, rng, as_of)
    orders = generate_orders(customers, rng, as_of)
    customers["loyalty_points"] = _loyalty_points(customers, orders)
    return customers, orders


def seed(
    engine: Engine, customers: int, seed: int = 42, as_of: datetime | None = None
) -> SeedResult:
    """Replace the demo's customers and orders with a generated population."""
    as_of = (as_of or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    customer_rows, order_rows = generate(customers, seed, as_of)
    warehouse.create_source_tables(engine)
    with engine.begin() as conn:
        conn.execute(delete(schema.orders))
        conn.execute(delete(schema.customers))
        if engine.dialect.name == "postgresql":
            _copy_postgres(conn, "customers", customer_rows)
            _copy_postgres(conn, "orders", order_rows)
        else:
            _insert_sqlite(conn, "customers", customer_rows)
            _insert_sqlite(conn, "orders", order_rows)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE customers")
            conn.exec_driver_sql("ANALYZE orders")
    return SeedResult(len(customer_rows), len(order_rows), as_of)


def _copy_postgres(conn: Connection, table: str, frame: pd.DataFrame) -> None:
    """COPY in CSV chunks: an order of magnitude faster than INSERTs."""
    columns = ", ".join(frame.columns)
    cursor = conn.connection.cursor()
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:
        for start in range(0, len(frame), 200_000):
            chunk = _with_utc_text(frame.iloc[start : start + 200_000], "%Y-%m-%d %H:%M:%S+00")
            buffer = io.StringIO()
            chunk.to_csv(buffer, header=False, index=False)
            copy.write(buffer.getvalue())


def _insert_sqlite(conn: Connection, table: str, frame: pd.DataFrame) -> None:
    placeholders = ", ".join("?" for _ in frame.columns)
    sql = f"INSERT INTO {table} ({', '.join(frame.columns)}) VALUES ({placeholders})"
    cursor = conn.connection.cursor()
    for start in range(0, len(frame), 200_000):
        chunk = _with_utc_text(frame.iloc[start : start + 200_000], SQLITE_TIME)
        # pandas-stubs do not allow other=None, which pandas documents: NULL for missing values
        chunk = chunk.astype(object).where(chunk.notna(), None)  # type: ignore[call-overload]
        cursor.executemany(sql, chunk.itertuples(index=False, name=None))


def _with_utc_text(frame: pd.DataFrame, fmt: str) -> pd.DataFrame:
    frame = frame.copy()
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = frame[column].dt.strftime(fmt)
    return frame


@dataclass(frozen=True)
class Summary:
    """What the warehouse holds: counts by locale, consent, and the orders' span."""

    customers: int
    by_locale: dict[str | None, int]
    with_consent: int
    orders: int
    first_order: datetime | None
    last_order: datetime | None


def summary(engine: Engine) -> Summary:
    c, o = schema.customers, schema.orders
    with engine.connect() as conn:
        by_locale = dict(
            conn.execute(select(c.c.locale, func.count()).group_by(c.c.locale)).tuples().all()
        )
        consent = conn.execute(select(func.count()).where(c.c.marketing_consent)).scalar_one()
        total = conn.execute(select(func.count()).select_from(c)).scalar_one()
        orders, first, last = conn.execute(
            select(func.count(), func.min(o.c.placed_at), func.max(o.c.placed_at))
        ).one()
    return Summary(total, by_locale, consent, orders, first, last)
