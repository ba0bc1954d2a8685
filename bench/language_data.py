"""The evaluation set of bench/language.py: team threads with the key points a summary must state
and the action items they hold, and sentences with reference translations.

Every thread starts on Monday 2026-11-30 at 09:00 UTC, one message a minute, so relative deadlines
have one right answer ("Friday" is 2026-12-04). A key point is a list of keyword groups: it counts
as stated when the summary holds one word of every group (case-insensitive). An action item is
(keywords of what, who, ISO date or None). The three long threads wrap a short one in the day's
other chatter (seeded, so every run reads the same thread): 150, 300 and 450 messages, the last
one longer than the default 8,192-token window.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

Point = list[list[str]]
Action = tuple[list[str], str | None, str | None]


@dataclass
class Thread:
    """One Slack-style thread and what a good summary and action list of it contain."""

    name: str
    messages: list[tuple[str, str]]
    points: list[Point]
    reference: str
    actions: list[Action] = field(default_factory=list)


THREADS: list[Thread] = [
    Thread(
        "deploy-disk",
        [
            ("Ana", "The nightly deploy failed again. db-2 ran out of disk."),
            ("Raj", "I can add 100 GB to db-2 and rerun the deploy tonight."),
            ("Mei", "Please also set up a disk alert at 80% so this does not surprise us again."),
            ("Raj", "OK, I'll do the alert by Friday."),
            ("Ana", "Great. I'll tell the customer the release moves to tomorrow."),
            ("Mei", "Should we switch to the bigger instance type? It costs 30% more."),
            ("Ana", "Let's decide that next week after we see the usage numbers."),
        ],
        [
            [["deploy"], ["disk", "space"]],
            [["100"], ["raj"]],
            [["alert"]],
            [["customer"], ["tomorrow"]],
            [["instance", "bigger"]],
        ],
        "The nightly deploy failed because db-2 ran out of disk. Raj adds 100 GB and reruns it tonight "
        "and sets up a disk alert by Friday. Ana tells the customer the release moves to tomorrow. "
        "Switching to a bigger instance is decided next week.",
        [
            (["100", "disk", "rerun"], "Raj", "2026-11-30"),
            (["alert"], "Raj", "2026-12-04"),
            (["customer", "tell"], "Ana", None),
        ],
    ),
    Thread(
        "login-latency",
        [
            ("Lena", "Login p95 went from 300 ms to 2 s after yesterday's release."),
            ("Omar", "Traces show the session lookup is doing a full table scan."),
            ("Lena", "Did the migration drop the index on sessions.user_id?"),
            ("Omar", "Yes, the down migration ran by mistake. I'll recreate the index today."),
            ("Priya", "I'll add a check to CI that fails when an index disappears, by Thursday."),
            ("Lena", "Thanks both. I'll write the incident note."),
        ],
        [
            [["login", "latency", "slow", "p95"]],
            [["index"]],
            [["migration"]],
            [["ci", "check"]],
            [["incident"]],
        ],
        "Login latency rose to 2 s after the release because a migration dropped the index on "
        "sessions.user_id. Omar recreates the index today, Priya adds a CI check by Thursday and Lena "
        "writes the incident note.",
        [
            (["index"], "Omar", "2026-11-30"),
            (["ci", "check"], "Priya", "2026-12-03"),
            (["incident", "note"], "Lena", None),
        ],
    ),
    Thread(
        "pricing-page",
        [
            ("Sofia", "Marketing wants the new pricing page live on Monday."),
            ("Ben", "The annual plan toggle is not done yet; it needs two more days."),
            ("Sofia", "Can we ship without the toggle and add it later?"),
            ("Ben", "Yes, if we hide the annual prices behind a feature flag."),
            ("Kai", "Legal still has to approve the new terms text."),
            ("Sofia", "I'll chase legal tomorrow. Ben, please add the flag."),
            ("Ben", "Will do by Wednesday."),
        ],
        [[["pricing"], ["monday"]], [["toggle", "annual"]], [["flag"]], [["legal"]]],
        "The pricing page should go live on Monday without the annual plan toggle, hidden behind a "
        "feature flag that Ben adds by Wednesday. Legal must approve the terms; Sofia chases them tomorrow.",
        [(["flag"], "Ben", "2026-12-02"), (["legal"], "Sofia", "2026-12-01")],
    ),
    Thread(
        "oncall-swap",
        [
            ("Tom", "I'm on call next week but I'll be at a conference Tuesday to Thursday."),
            ("Nina", "I can take Tuesday and Wednesday."),
            ("Felix", "I'll take Thursday."),
            ("Tom", "Thanks! I'll update the PagerDuty schedule today."),
            ("Nina", "Remember to hand over the open Redis ticket."),
        ],
        [
            [["call"], ["conference"]],
            [["nina"], ["tuesday", "wednesday"]],
            [["felix"], ["thursday"]],
            [["pagerduty", "schedule"]],
        ],
        "Tom is on call next week but away Tuesday to Thursday: Nina covers Tuesday and Wednesday, Felix "
        "Thursday. Tom updates the PagerDuty schedule today and hands over the Redis ticket.",
        [(["pagerduty", "schedule"], "Tom", "2026-11-30"), (["redis", "ticket", "hand"], "Tom", None)],
    ),
    Thread(
        "api-v2",
        [
            ("Ivan", "Proposal: deprecate API v1 at the end of the quarter."),
            ("Grace", "Three big customers still call v1 daily."),
            ("Ivan", "Then we email them this week with a migration guide."),
            ("Grace", "I'll draft the email and the guide by Friday."),
            ("Hugo", "We need usage numbers per customer first. I'll pull them tomorrow."),
            ("Ivan", "Agreed: no hard date until we see the numbers."),
        ],
        [[["v1"], ["deprecat"]], [["customers"]], [["email", "guide"]], [["usage", "numbers"]]],
        "The team wants to deprecate API v1, but three big customers still use it. Grace drafts an "
        "email and migration guide by Friday, Hugo pulls per-customer usage numbers tomorrow, and no "
        "hard date is set until then.",
        [(["email", "guide", "draft"], "Grace", "2026-12-04"), (["usage", "numbers"], "Hugo", "2026-12-01")],
    ),
    Thread(
        "flaky-tests",
        [
            ("Zoe", "The checkout tests failed 4 times today, always the payment timeout one."),
            ("Sam", "It waits on the real sandbox; the sandbox was slow all morning."),
            ("Zoe", "Can we mock the payment provider in that test?"),
            ("Sam", "Yes. I'll replace it with the recorded fixture by end of day."),
            ("Zoe", "And let's quarantine it until then."),
        ],
        [
            [["checkout", "payment"], ["fail", "flaky"]],
            [["sandbox"]],
            [["mock", "fixture"]],
            [["quarantine"]],
        ],
        "The checkout payment-timeout test fails because it waits on the slow payment sandbox. Sam "
        "replaces it with a recorded fixture by end of day; it is quarantined until then.",
        [(["fixture", "mock", "replace"], "Sam", "2026-11-30")],
    ),
    Thread(
        "offsite",
        [
            ("Maya", "Offsite planning: Lisbon or Porto in March?"),
            ("Luis", "Lisbon has direct flights from everywhere we are."),
            ("Eva", "Porto is cheaper, around 20% less for the venue."),
            ("Maya", "Let's vote in the channel by Wednesday."),
            ("Luis", "I'll get two venue quotes for each city by next week."),
        ],
        [[["offsite"], ["lisbon", "porto"]], [["flight", "cheaper", "20%"]], [["vote"]], [["quote"]]],
        "The offsite is in March, in Lisbon (direct flights) or Porto (about 20% cheaper). The team "
        "votes by Wednesday; Luis gets venue quotes for both cities by next week.",
        [(["vote"], None, "2026-12-02"), (["quote"], "Luis", "2026-12-07")],
    ),
    Thread(
        "data-export",
        [
            ("Ken", "A customer asked for a full export of their data under GDPR."),
            ("Rosa", "We have 30 days to answer. The export script misses the audit logs."),
            ("Ken", "Can you add the audit logs to the script?"),
            ("Rosa", "Yes, by Thursday."),
            ("Ken", "I'll confirm the request with the customer today and ask legal to review the export."),
        ],
        [[["export"], ["gdpr", "customer"]], [["30 days"]], [["audit"]], [["legal"]]],
        "A customer asked for a GDPR export, due within 30 days. Rosa adds the missing audit logs to the "
        "export script by Thursday; Ken confirms with the customer today and asks legal to review.",
        [
            (["audit"], "Rosa", "2026-12-03"),
            (["confirm", "customer"], "Ken", "2026-11-30"),
            (["legal", "review"], "Ken", None),
        ],
    ),
    Thread(
        "design-review",
        [
            ("Ada", "Design review for the new onboarding flow is on Thursday."),
            ("Noor", "The empty states are still missing from the mockups."),
            ("Ada", "Noor, can you add them before the review?"),
            ("Noor", "Sure, I'll have them by Wednesday."),
            ("Leo", "I'd like us to test the flow with five users first."),
            ("Ada", "Good idea. Leo, please book the sessions for next week."),
        ],
        [[["onboarding"], ["review", "thursday"]], [["empty states", "empty"]], [["users", "test"]]],
        "The onboarding flow's design review is on Thursday. Noor adds the missing empty states by "
        "Wednesday, and Leo books tests with five users for next week.",
        [(["empty"], "Noor", "2026-12-02"), (["book", "sessions", "test"], "Leo", "2026-12-07")],
    ),
    Thread(
        "cost-spike",
        [
            ("Dan", "Our cloud bill jumped 40% this month."),
            ("Iris", "It's the logging cluster: debug logs were left on in production."),
            ("Dan", "Turn them off today please."),
            ("Iris", "Done already. I'll also set a budget alarm at 110% of last month."),
            ("Dan", "Thanks. Let's review retention settings in Friday's ops meeting."),
        ],
        [[["bill", "cost"], ["40"]], [["debug", "logging"]], [["budget", "alarm"]], [["retention"]]],
        "The cloud bill rose 40% because debug logs were left on in production; Iris turned them off "
        "and sets a budget alarm at 110%. Retention settings are reviewed in Friday's ops meeting.",
        [(["budget", "alarm"], "Iris", None)],
    ),
    Thread(
        "hiring",
        [
            ("Olga", "We have three final candidates for the backend role."),
            ("Paul", "I liked the second one most, strong on databases."),
            ("Olga", "Same. Can you do the reference checks?"),
            ("Paul", "Yes, I'll call both references tomorrow."),
            ("Olga", "Then I'll prepare the offer for Friday if they check out."),
        ],
        [[["candidate"]], [["second", "database"]], [["reference"]], [["offer"]]],
        "Of three final backend candidates the team prefers the second, strong on databases. Paul "
        "calls the references tomorrow; Olga prepares an offer for Friday if they check out.",
        [(["reference"], "Paul", "2026-12-01"), (["offer"], "Olga", "2026-12-04")],
    ),
    Thread(
        "docs-migration",
        [
            ("Rita", "The old wiki goes read-only at the end of the month."),
            ("Yuki", "About 200 pages still need moving to the new docs site."),
            ("Rita", "Let's split them by team. Yuki, can you make the list?"),
            ("Yuki", "I'll share the list today."),
            ("Carl", "My team takes the infrastructure pages."),
            ("Rita", "Great, everyone moves their pages within two weeks."),
        ],
        [[["wiki"], ["read-only", "read only"]], [["200", "pages"]], [["list"]], [["two weeks"]]],
        "The old wiki goes read-only at month end and about 200 pages must move to the new docs site. "
        "Yuki shares a list split by team today, Carl's team takes the infrastructure pages, and each "
        "team moves its pages within two weeks.",
        [(["list"], "Yuki", "2026-11-30"), (["infrastructure"], "Carl", None)],
    ),
]

# The day's other chatter, around which the long threads are built.
_CHATTER = [
    "morning all", "anyone else seeing slow VPN today?", "coffee machine on 3 is fixed",
    "I'm heading to lunch, back in 30", "PR #{n} is ready for review if anyone has time",
    "thanks for the review!", "merged", "standup in 5", "can someone approve my PR #{n}?",
    "the staging deploy is green", "reminder: retro at 4pm", "I'll be offline for an hour",
    "nice work on the dashboard", "does anyone know who owns the billing service?",
    "I think that's the payments team", "+1", "looking into it", "brb", "lgtm",
    "rebased, CI running again", "flaky test again, rerunning", "welcome to the team, Jo!",
    "which room is the planning meeting in?", "room 4B", "the build cache was cleared",
    "heads up: dependency bump in #{n}", "TIL you can filter logs by trace id", "ok",
]  # fmt: skip
_CHATTERERS = ["Jo", "Alex", "Sam", "Kim", "Lee", "Pat", "Robin", "Chris"]


def long_thread(base: Thread, total: int, seed: int) -> Thread:
    """`base`'s messages, in order, spread through a day of other chatter: `total` messages."""
    rng = random.Random(seed)
    slots = sorted(rng.sample(range(total), len(base.messages)))
    messages: list[tuple[str, str]] = []
    core = iter(base.messages)
    for i in range(total):
        if i in slots:
            messages.append(next(core))
        else:
            line = rng.choice(_CHATTER).replace("{n}", str(rng.randint(1000, 9999)))
            messages.append((rng.choice(_CHATTERERS), line))
    return Thread(f"{base.name}-{total}", messages, base.points, base.reference, base.actions)


THREADS += [
    long_thread(THREADS[0], 150, seed=1),
    long_thread(THREADS[1], 300, seed=2),
    long_thread(THREADS[4], 450, seed=3),
]

# Sentences a team writes, with reference translations.
SENTENCES: list[dict[str, str]] = [
    {"en": "The deploy failed because the database ran out of disk space.",
     "fr": "Le déploiement a échoué parce que la base de données n'avait plus d'espace disque.",
     "de": "Das Deployment ist fehlgeschlagen, weil der Datenbank der Speicherplatz ausgegangen ist.",
     "es": "El despliegue falló porque la base de datos se quedó sin espacio en disco.",
     "ja": "データベースのディスク容量が不足したため、デプロイが失敗しました。"},
    {"en": "Can you review my pull request before lunch?",
     "fr": "Peux-tu relire ma pull request avant le déjeuner ?",
     "de": "Kannst du meinen Pull-Request vor dem Mittagessen prüfen?",
     "es": "¿Puedes revisar mi pull request antes del almuerzo?",
     "ja": "昼食の前に私のプルリクエストをレビューしてもらえますか？"},
    {"en": "The meeting is moved to Thursday at three o'clock.",
     "fr": "La réunion est déplacée à jeudi à quinze heures.",
     "de": "Das Meeting wird auf Donnerstag um drei Uhr verschoben.",
     "es": "La reunión se traslada al jueves a las tres.",
     "ja": "会議は木曜日の3時に変更されました。"},
    {"en": "We will release the new version next week.",
     "fr": "Nous publierons la nouvelle version la semaine prochaine.",
     "de": "Wir veröffentlichen die neue Version nächste Woche.",
     "es": "Publicaremos la nueva versión la próxima semana.",
     "ja": "来週、新しいバージョンをリリースします。"},
    {"en": "Please update the documentation after you merge the change.",
     "fr": "Merci de mettre à jour la documentation après avoir fusionné la modification.",
     "de": "Bitte aktualisiere die Dokumentation, nachdem du die Änderung gemergt hast.",
     "es": "Por favor, actualiza la documentación después de fusionar el cambio.",
     "ja": "変更をマージした後、ドキュメントを更新してください。"},
    {"en": "The customer reported that the login page is very slow.",
     "fr": "Le client a signalé que la page de connexion est très lente.",
     "de": "Der Kunde hat gemeldet, dass die Anmeldeseite sehr langsam ist.",
     "es": "El cliente informó que la página de inicio de sesión es muy lenta.",
     "ja": "顧客から、ログインページがとても遅いと報告がありました。"},
    {"en": "I am on call this weekend.",
     "fr": "Je suis d'astreinte ce week-end.",
     "de": "Ich habe an diesem Wochenende Bereitschaft.",
     "es": "Estoy de guardia este fin de semana.",
     "ja": "今週末は私がオンコール担当です。"},
    {"en": "Thank you for your help with the migration.",
     "fr": "Merci pour ton aide avec la migration.",
     "de": "Danke für deine Hilfe bei der Migration.",
     "es": "Gracias por tu ayuda con la migración.",
     "ja": "移行を手伝ってくれてありがとうございます。"},
    {"en": "The tests pass on my machine but fail in CI.",
     "fr": "Les tests passent sur ma machine mais échouent dans la CI.",
     "de": "Die Tests laufen auf meinem Rechner durch, schlagen aber in der CI fehl.",
     "es": "Las pruebas pasan en mi máquina pero fallan en la CI.",
     "ja": "テストは私のマシンでは通りますが、CIでは失敗します。"},
    {"en": "We need to decide on the budget before Friday.",
     "fr": "Nous devons décider du budget avant vendredi.",
     "de": "Wir müssen vor Freitag über das Budget entscheiden.",
     "es": "Tenemos que decidir el presupuesto antes del viernes.",
     "ja": "金曜日までに予算を決める必要があります。"},
    {"en": "The new office opens in March.",
     "fr": "Le nouveau bureau ouvre en mars.",
     "de": "Das neue Büro öffnet im März.",
     "es": "La nueva oficina abre en marzo.",
     "ja": "新しいオフィスは3月にオープンします。"},
    {"en": "Who is responsible for the billing service?",
     "fr": "Qui est responsable du service de facturation ?",
     "de": "Wer ist für den Abrechnungsdienst verantwortlich?",
     "es": "¿Quién es responsable del servicio de facturación?",
     "ja": "請求サービスの担当者は誰ですか？"},
    {"en": "The server will be down for maintenance tonight.",
     "fr": "Le serveur sera indisponible pour maintenance ce soir.",
     "de": "Der Server ist heute Nacht wegen Wartungsarbeiten nicht erreichbar.",
     "es": "El servidor estará caído por mantenimiento esta noche.",
     "ja": "今夜はメンテナンスのためサーバーが停止します。"},
    {"en": "Let's discuss this in tomorrow's standup.",
     "fr": "Discutons-en au stand-up de demain.",
     "de": "Lass uns das im morgigen Stand-up besprechen.",
     "es": "Hablemos de esto en la reunión diaria de mañana.",
     "ja": "明日のスタンドアップでこれについて話し合いましょう。"},
    {"en": "The invoice was sent to the wrong address.",
     "fr": "La facture a été envoyée à la mauvaise adresse.",
     "de": "Die Rechnung wurde an die falsche Adresse geschickt.",
     "es": "La factura se envió a la dirección equivocada.",
     "ja": "請求書が間違った住所に送られました。"},
    {"en": "I fixed the bug and added a test for it.",
     "fr": "J'ai corrigé le bug et ajouté un test.",
     "de": "Ich habe den Fehler behoben und einen Test dafür hinzugefügt.",
     "es": "Corregí el error y añadí una prueba para él.",
     "ja": "バグを修正し、そのためのテストを追加しました。"},
]  # fmt: skip
