"""The evaluation set of bench/language.py: team threads with the key points a summary must state
and the action items they hold, and sentences with reference translations.

Every thread starts on Monday 2026-11-30 at 09:00 UTC, one message a minute, so relative deadlines
have one right answer ("Friday" is 2026-12-04). A key point is a list of keyword groups: it counts
as stated when the summary holds one word of every group (case-insensitive). An action item is
(keywords of what, who, ISO date or None). The twelve short threads have 10 to 14 messages: the
decisions among questions, answers and acknowledgements, as a team writes them. The three long
threads wrap a short one in the day's other chatter (seeded, so every run reads the same thread):
150, 300 and 450 messages, the last one longer than the default 8,192-token window. Of the 40
sentences, some hold a number, a time, a weekday or a product name, and a few a code span or a URL
that a translation must pass through unchanged.
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
            ("Mei", "Again? That's the second time this month."),
            ("Ana", "Yes. Job log: https://ci.internal/jobs/nightly/4821"),
            ("Raj", "I can add 100 GB to db-2 and rerun the deploy tonight."),
            ("Ana", "That would be great, thanks Raj."),
            ("Mei", "How full is db-2 right now?"),
            ("Raj", "97%, mostly the events table."),
            ("Mei", "Please also set up a disk alert at 80% so this does not surprise us again."),
            ("Raj", "OK, I'll do the alert by Friday."),
            ("Ana", "Great. I'll tell the customer the release moves to tomorrow."),
            ("Mei", "Should we switch to the bigger instance type? It costs 30% more."),
            ("Raj", "It would also double the disk, for what it's worth."),
            ("Ana", "Let's decide that next week after we see the usage numbers."),
            ("Mei", "Works for me."),
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
            ("Omar", "Ouch. Is it all users or only some regions?"),
            ("Lena", "All regions. Dashboard: https://grafana.internal/d/auth-overview"),
            ("Omar", "Traces show the session lookup is doing a full table scan."),
            ("Priya", "That table has about 40 million rows, no wonder."),
            ("Lena", "Did the migration drop the index on sessions.user_id?"),
            ("Omar", "One sec, reading the migration log."),
            ("Omar", "Yes, the down migration ran by mistake. I'll recreate the index today."),
            ("Lena", "How long will the index build take?"),
            ("Omar", "About 20 minutes with CONCURRENTLY, so no table lock."),
            ("Priya", "I'll add a check to CI that fails when an index disappears, by Thursday."),
            ("Omar", "Nice, that would have caught this one."),
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
            ("Kai", "Is that the version with the three tiers?"),
            ("Sofia", "Yes, Starter, Team and Enterprise. Mockups: https://figma.com/file/Xk29/plans-page"),
            ("Ben", "The annual plan toggle is not done yet; it needs two more days."),
            ("Sofia", "What's left on it?"),
            ("Ben", "Mostly the discount math and the tests."),
            ("Sofia", "Can we ship without the toggle and add it later?"),
            ("Ben", "Yes, if we hide the annual prices behind a feature flag."),
            ("Kai", "So visitors only see monthly prices at first?"),
            ("Ben", "Exactly."),
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
            ("Nina", "Oh nice, which conference?"),
            ("Tom", "A platform engineering one in Berlin, I'm giving a short talk."),
            ("Felix", "Good luck with the talk!"),
            ("Nina", "I can take Tuesday and Wednesday."),
            ("Felix", "I'll take Thursday."),
            ("Tom", "Thanks! I'll update the PagerDuty schedule today."),
            ("Nina", "Is the runbook link in the channel topic still current?"),
            ("Tom", "Yes, nothing changed there."),
            ("Nina", "Remember to hand over the open Redis ticket."),
            ("Felix", "Is that the one about evictions on cache-3?"),
            ("Nina", "Yes, that one."),
            ("Tom", "Good catch, thanks."),
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
            ("Hugo", "What's the main cost of keeping it?"),
            ("Ivan", "Two auth code paths and a separate rate limiter, mostly."),
            ("Grace", "Three big customers still call v1 daily."),
            ("Ivan", "Which ones?"),
            ("Grace", "Northwind, Globex and Initech. Their account pages are in the CRM."),
            ("Ivan", "Then we email them this week with a migration guide."),
            ("Grace", "I'll draft the email and the guide by Friday."),
            ("Ivan", "Thanks Grace."),
            ("Hugo", "We need usage numbers per customer first. I'll pull them tomorrow."),
            ("Grace", "Good, that will make the email more concrete."),
            ("Ivan", "Agreed: no hard date until we see the numbers."),
            ("Hugo", "+1"),
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
            ("Sam", "Which job? The nightly or the PR pipeline?"),
            ("Zoe", "The PR pipeline, last run: https://ci.internal/runs/58213"),
            ("Sam", "It waits on the real sandbox; the sandbox was slow all morning."),
            ("Zoe", "Their status page says degraded performance."),
            ("Sam", "Yes, since about 8:00 UTC."),
            ("Zoe", "Can we mock the payment provider in that test?"),
            ("Sam", "Yes. I'll replace it with the recorded fixture by end of day."),
            ("Zoe", "Does the fixture cover the timeout case too?"),
            ("Sam", "Yes, we recorded one slow response for that."),
            ("Zoe", "And let's quarantine it until then."),
            ("Sam", "Sounds good."),
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
            ("Eva", "Both sound great to me."),
            ("Luis", "How many people are we this time?"),
            ("Maya", "About 35, including the new hires."),
            ("Luis", "Lisbon has direct flights from everywhere we are."),
            ("Eva", "Even from Tallinn?"),
            ("Luis", "Yes, there's one daily."),
            ("Eva", "Porto is cheaper, around 20% less for the venue."),
            ("Eva", "And the food in Porto is hard to beat 😄"),
            ("Maya", "Let's vote in the channel by Wednesday."),
            ("Luis", "I'll get two venue quotes for each city by next week."),
            ("Maya", "Perfect."),
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
            ("Rosa", "Which account?"),
            ("Ken", "Acme Retail, ticket SUP-4412."),
            ("Rosa", "We have 30 days to answer. The export script misses the audit logs."),
            ("Ken", "Is that all that's missing?"),
            ("Rosa", "Yes, the rest of the tables are covered."),
            ("Ken", "Can you add the audit logs to the script?"),
            ("Rosa", "Yes, by Thursday."),
            ("Ken", "Thanks!"),
            ("Rosa", "Their audit logs are big, roughly 12 GB as CSV."),
            ("Ken", "I'll confirm the request with the customer today and ask legal to review the export."),
            ("Rosa", "Sounds good."),
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
            ("Noor", "Is it in person or remote?"),
            ("Ada", "Remote, the invite has the link."),
            ("Noor", "The empty states are still missing from the mockups."),
            ("Ada", "Which screens need them?"),
            ("Noor", "The project list and the team page."),
            ("Ada", "Noor, can you add them before the review?"),
            ("Noor", "Sure, I'll have them by Wednesday."),
            ("Ada", "Thank you!"),
            ("Leo", "I'd like us to test the flow with five users first."),
            ("Noor", "+1, we skipped that last time and regretted it."),
            ("Ada", "Good idea. Leo, please book the sessions for next week."),
            ("Leo", "On it."),
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
            ("Iris", "Yikes. Do you have the breakdown by service?"),
            ("Dan", "Here: https://console.cloud.internal/reports/spend-nov"),
            ("Iris", "It's the logging cluster: debug logs were left on in production."),
            ("Dan", "Since when?"),
            ("Iris", "Since the release two weeks ago; a config change was never reverted."),
            ("Dan", "Turn them off today please."),
            ("Iris", "Done already. I'll also set a budget alarm at 110% of last month."),
            ("Dan", "How soon will we see it in the numbers?"),
            ("Iris", "Ingest is already back to normal; the graph is flat again."),
            ("Dan", "Thanks. Let's review retention settings in Friday's ops meeting."),
            ("Iris", "Sounds good."),
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
            ("Paul", "Are all the interview notes in the tracker now?"),
            ("Olga", "Yes, all three write-ups are there."),
            ("Paul", "I liked the second one most, strong on databases."),
            ("Olga", "Same. Can you do the reference checks?"),
            ("Paul", "Yes, I'll call both references tomorrow."),
            ("Olga", "Thanks. Her system design round was the best of the three."),
            ("Paul", "Agreed, and she asked good questions about our on-call setup."),
            ("Olga", "Then I'll prepare the offer for Friday if they check out."),
            ("Paul", "Sounds good."),
            ("Olga", "Fingers crossed 🤞"),
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
            ("Carl", "Does that include the attachments?"),
            ("Rita", "Yes, everything on it."),
            ("Yuki", "About 200 pages still need moving to the new docs site."),
            ("Carl", "Is there an import tool, or is it copy and paste?"),
            ("Yuki", "There's a Markdown converter that handles most of it: https://docs.internal/migrate"),
            ("Rita", "Let's split them by team. Yuki, can you make the list?"),
            ("Yuki", "I'll share the list today."),
            ("Rita", "Thank you!"),
            ("Carl", "My team takes the infrastructure pages."),
            ("Yuki", "Thanks Carl, that's the biggest chunk."),
            ("Rita", "Great, everyone moves their pages within two weeks."),
            ("Carl", "+1"),
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
    # Code spans and URLs stay as they are in every reference: a translation must not touch them.
    {"en": "The all-hands meeting starts at 10:30 on Wednesday, so I moved our one-on-one to the afternoon.",
     "fr": "La réunion générale commence mercredi à 10 h 30, donc j'ai déplacé notre point en tête-à-tête à "
           "l'après-midi.",
     "de": "Das All-Hands-Meeting beginnt am Mittwoch um 10:30 Uhr, deshalb habe ich unser Einzelgespräch "
           "auf den Nachmittag verschoben.",
     "es": "La reunión general empieza el miércoles a las 10:30, así que moví nuestra reunión individual a "
           "la tarde.",
     "ja": "全社ミーティングが水曜日の10時30分から始まるので、私たちの1on1を午後に移しました。"},
    {"en": "Please run `make migrate` before you deploy the new version to staging.",
     "fr": "Merci de lancer `make migrate` avant de déployer la nouvelle version en staging.",
     "de": "Bitte führe `make migrate` aus, bevor du die neue Version auf Staging deployst.",
     "es": "Por favor, ejecuta `make migrate` antes de desplegar la nueva versión en staging.",
     "ja": "新しいバージョンをステージングにデプロイする前に、`make migrate` を実行してください。"},
    {"en": "The office is closed from December 24 to January 2, but support stays available by email.",
     "fr": "Le bureau est fermé du 24 décembre au 2 janvier, mais le support reste joignable par e-mail.",
     "de": "Das Büro ist vom 24. Dezember bis zum 2. Januar geschlossen, der Support bleibt aber per E-Mail "
           "erreichbar.",
     "es": "La oficina está cerrada del 24 de diciembre al 2 de enero, pero el soporte sigue disponible por "
           "correo electrónico.",
     "ja": "オフィスは12月24日から1月2日まで休業しますが、サポートはメールで引き続き対応します。"},
    {"en": "The marketing team still has 15,000 euros in this year's budget and must spend it before "
           "December 31.",
     "fr": "L'équipe marketing a encore 15 000 euros dans le budget de cette année et doit les dépenser "
           "avant le 31 décembre.",
     "de": "Das Marketingteam hat noch 15.000 Euro im diesjährigen Budget und muss sie vor dem 31. Dezember "
           "ausgeben.",
     "es": "El equipo de marketing todavía tiene 15.000 euros en el presupuesto de este año y debe gastarlos "
           "antes del 31 de diciembre.",
     "ja": "マーケティングチームには今年の予算がまだ15,000ユーロ残っていて、"
           "12月31日までに使い切る必要があります。"},
    {"en": "The customer wants a call tomorrow morning to talk about the renewal of their contract.",
     "fr": "Le client veut un appel demain matin pour parler du renouvellement de son contrat.",
     "de": "Der Kunde möchte morgen früh telefonieren, um über die Verlängerung seines Vertrags zu sprechen.",
     "es": "El cliente quiere una llamada mañana por la mañana para hablar de la renovación de su contrato.",
     "ja": "顧客は契約の更新について話し合うため、明日の朝に電話をしたいと言っています。"},
    {"en": "We are hiring two frontend engineers; please share the job post with anyone who might be "
           "interested.",
     "fr": "Nous recrutons deux ingénieurs frontend ; merci de partager l'offre d'emploi avec toutes les "
           "personnes susceptibles d'être intéressées.",
     "de": "Wir stellen zwei Frontend-Entwickler ein; bitte teile die Stellenanzeige mit allen, die "
           "Interesse haben könnten.",
     "es": "Estamos contratando a dos ingenieros de frontend; por favor, comparte la oferta de empleo con "
           "cualquiera que pueda estar interesado.",
     "ja": "フロントエンドエンジニアを2名採用中です。"
           "興味がありそうな人がいれば、求人情報を共有してください。"},
    {"en": "The new expense policy is on the wiki at https://wiki.example.com/expenses and applies from next "
           "month.",
     "fr": "La nouvelle politique de notes de frais est sur le wiki à l'adresse "
           "https://wiki.example.com/expenses et s'applique à partir du mois prochain.",
     "de": "Die neue Spesenrichtlinie steht im Wiki unter https://wiki.example.com/expenses und gilt ab "
           "nächstem Monat.",
     "es": "La nueva política de gastos está en la wiki, en https://wiki.example.com/expenses, y se aplica a "
           "partir del próximo mes.",
     "ja": "新しい経費規定はWikiの https://wiki.example.com/expenses に掲載されていて、"
           "来月から適用されます。"},
    {"en": "Version 3.2 of the Android app is rolling out to 10% of users today.",
     "fr": "La version 3.2 de l'application Android est déployée aujourd'hui auprès de 10 % des "
           "utilisateurs.",
     "de": "Version 3.2 der Android-App wird heute für 10 % der Nutzer ausgerollt.",
     "es": "La versión 3.2 de la aplicación de Android se está desplegando hoy para el 10 % de los usuarios.",
     "ja": "Androidアプリのバージョン3.2を、今日10%のユーザーに向けて展開しています。"},
    {"en": "The coffee machine on the second floor is broken again, so use the one in the kitchen.",
     "fr": "La machine à café du deuxième étage est encore en panne, alors utilise celle de la cuisine.",
     "de": "Die Kaffeemaschine im zweiten Stock ist schon wieder kaputt, also nimm die in der Küche.",
     "es": "La cafetera del segundo piso está rota otra vez, así que usa la de la cocina.",
     "ja": "2階のコーヒーマシンがまた壊れているので、キッチンのものを使ってください。"},
    {"en": "I can't make it to the retro today, but I added my notes to the board.",
     "fr": "Je ne pourrai pas venir à la rétro aujourd'hui, mais j'ai ajouté mes notes au tableau.",
     "de": "Ich schaffe es heute nicht zur Retro, aber ich habe meine Notizen auf dem Board ergänzt.",
     "es": "Hoy no puedo ir a la retro, pero añadí mis notas al tablero.",
     "ja": "今日のレトロには参加できませんが、自分のメモをボードに追加しておきました。"},
    {"en": "We rolled back the release because error rates doubled within five minutes.",
     "fr": "Nous avons annulé la mise en production, car le taux d'erreurs a doublé en cinq minutes.",
     "de": "Wir haben das Release zurückgerollt, weil sich die Fehlerrate innerhalb von fünf Minuten "
           "verdoppelt hat.",
     "es": "Revertimos la versión porque la tasa de errores se duplicó en cinco minutos.",
     "ja": "5分以内にエラー率が2倍になったため、リリースをロールバックしました。"},
    {"en": "Friday is a public holiday in Germany, so the Berlin team will be off.",
     "fr": "Vendredi est férié en Allemagne, donc l'équipe de Berlin sera en congé.",
     "de": "Freitag ist in Deutschland ein Feiertag, daher hat das Berliner Team frei.",
     "es": "El viernes es festivo en Alemania, así que el equipo de Berlín tendrá el día libre.",
     "ja": "金曜日はドイツの祝日なので、ベルリンチームは休みです。"},
    {"en": "Three enterprise customers asked for single sign-on this quarter, so it moves up on the roadmap.",
     "fr": "Trois clients grands comptes ont demandé l'authentification unique ce trimestre, donc elle "
           "remonte dans la feuille de route.",
     "de": "Drei Enterprise-Kunden haben in diesem Quartal nach Single Sign-on gefragt, deshalb rückt es auf "
           "der Roadmap nach oben.",
     "es": "Tres clientes empresariales pidieron inicio de sesión único este trimestre, así que sube de "
           "prioridad en la hoja de ruta.",
     "ja": "今四半期にエンタープライズ顧客3社からシングルサインオンの要望があったため、"
           "ロードマップでの優先度が上がります。"},
    {"en": "The build breaks because `node_modules` was committed by mistake; please remove it from the "
           "repo.",
     "fr": "Le build échoue parce que `node_modules` a été commité par erreur ; merci de le retirer du "
           "dépôt.",
     "de": "Der Build schlägt fehl, weil `node_modules` versehentlich committet wurde; bitte entferne es aus "
           "dem Repo.",
     "es": "La compilación falla porque `node_modules` se incluyó en un commit por error; por favor, "
           "elimínalo del repositorio.",
     "ja": "`node_modules` が誤ってコミットされたため、ビルドが失敗しています。"
           "リポジトリから削除してください。"},
    {"en": "The second interview with the candidate is on Tuesday at 2 pm; can you join as the technical "
           "interviewer?",
     "fr": "Le deuxième entretien avec le candidat a lieu mardi à 14 h ; peux-tu y participer en tant "
           "qu'intervieweur technique ?",
     "de": "Das zweite Vorstellungsgespräch mit dem Kandidaten ist am Dienstag um 14 Uhr; kannst du als "
           "technischer Interviewer dabei sein?",
     "es": "La segunda entrevista con el candidato es el martes a las 2 de la tarde; ¿puedes participar como "
           "entrevistador técnico?",
     "ja": "候補者との二次面接は火曜日の午後2時です。技術面接官として参加してもらえますか？"},
    {"en": "Please get approval from your manager before you book a flight that costs more than 500 euros.",
     "fr": "Merci d'obtenir l'accord de ton responsable avant de réserver un vol qui coûte plus de 500 "
           "euros.",
     "de": "Bitte hol dir die Genehmigung deiner Führungskraft, bevor du einen Flug buchst, der mehr als 500 "
           "Euro kostet.",
     "es": "Por favor, pide la aprobación de tu responsable antes de reservar un vuelo que cueste más de 500 "
           "euros.",
     "ja": "500ユーロを超える航空券を予約する前に、マネージャーの承認を得てください。"},
    {"en": "Grafana shows that memory usage on the API servers grows by about 2% every hour.",
     "fr": "Grafana montre que l'utilisation de la mémoire sur les serveurs d'API augmente d'environ 2 % par "
           "heure.",
     "de": "Grafana zeigt, dass der Speicherverbrauch auf den API-Servern um etwa 2 % pro Stunde steigt.",
     "es": "Grafana muestra que el uso de memoria en los servidores de la API crece alrededor de un 2 % cada "
           "hora.",
     "ja": "Grafanaを見ると、APIサーバーのメモリ使用量が1時間ごとに約2%増えています。"},
    {"en": "Could you reply to the customer today? They have been waiting for an answer since Monday.",
     "fr": "Pourrais-tu répondre au client aujourd'hui ? Il attend une réponse depuis lundi.",
     "de": "Könntest du dem Kunden heute antworten? Er wartet seit Montag auf eine Antwort.",
     "es": "¿Podrías responder al cliente hoy? Lleva esperando una respuesta desde el lunes.",
     "ja": "今日中にお客様へ返信してもらえますか？月曜日からずっと回答を待っています。"},
    {"en": "The new badges for the Lyon office arrive on Thursday; until then, ask reception to let you in.",
     "fr": "Les nouveaux badges pour le bureau de Lyon arrivent jeudi ; d'ici là, demande à l'accueil de te "
           "faire entrer.",
     "de": "Die neuen Zugangskarten für das Büro in Lyon kommen am Donnerstag; bis dahin bitte den Empfang, "
           "dich hereinzulassen.",
     "es": "Las nuevas tarjetas de acceso para la oficina de Lyon llegan el jueves; hasta entonces, pide a "
           "recepción que te deje entrar.",
     "ja": "リヨンオフィスの新しい入館証は木曜日に届きます。それまでは受付に頼んで入れてもらってください。"},
    {"en": "Let's keep the planning meeting to 45 minutes and move the open questions to Slack.",
     "fr": "Limitons la réunion de planification à 45 minutes et reportons les questions en suspens sur "
           "Slack.",
     "de": "Lass uns das Planungsmeeting auf 45 Minuten begrenzen und die offenen Fragen nach Slack "
           "verlagern.",
     "es": "Limitemos la reunión de planificación a 45 minutos y pasemos las preguntas pendientes a Slack.",
     "ja": "プランニング会議は45分に収めて、未解決の質問はSlackに移しましょう。"},
    {"en": "The status page at https://status.example.com now shows the outage as resolved.",
     "fr": "La page de statut https://status.example.com indique maintenant que la panne est résolue.",
     "de": "Die Statusseite unter https://status.example.com zeigt den Ausfall jetzt als behoben an.",
     "es": "La página de estado en https://status.example.com ya muestra la caída como resuelta.",
     "ja": "ステータスページ https://status.example.com では、障害が解決済みと表示されるようになりました。"},
    {"en": "Her first day is January 5, so her laptop needs to be ready by the end of this week.",
     "fr": "Son premier jour est le 5 janvier, donc son ordinateur portable doit être prêt d'ici la fin de "
           "cette semaine.",
     "de": "Ihr erster Arbeitstag ist der 5. Januar, daher muss ihr Laptop bis Ende dieser Woche "
           "einsatzbereit sein.",
     "es": "Su primer día es el 5 de enero, así que su portátil tiene que estar listo antes de que acabe "
           "esta semana.",
     "ja": "彼女の初出社日は1月5日なので、今週中にノートパソコンを用意しておく必要があります。"},
    {"en": "Set `MAX_WORKERS=8` in the config file, otherwise the job uses every core on the machine.",
     "fr": "Mets `MAX_WORKERS=8` dans le fichier de configuration, sinon la tâche utilise tous les cœurs de "
           "la machine.",
     "de": "Setz `MAX_WORKERS=8` in der Konfigurationsdatei, sonst nutzt der Job alle Kerne der Maschine.",
     "es": "Pon `MAX_WORKERS=8` en el archivo de configuración; si no, la tarea usa todos los núcleos de la "
           "máquina.",
     "ja": "設定ファイルで `MAX_WORKERS=8` を指定してください。そうしないと、"
           "ジョブがマシンのすべてのコアを使ってしまいます。"},
    {"en": "Great job on the demo yesterday; the client from Acme already asked for a second meeting.",
     "fr": "Bravo pour la démo d'hier ; le client d'Acme a déjà demandé une deuxième réunion.",
     "de": "Tolle Arbeit bei der Demo gestern; der Kunde von Acme hat schon um ein zweites Meeting gebeten.",
     "es": "Buen trabajo en la demo de ayer; el cliente de Acme ya pidió una segunda reunión.",
     "ja": "昨日のデモ、素晴らしかったです。Acmeのお客様から、もう2回目の打ち合わせの依頼が来ています。"},
]  # fmt: skip
