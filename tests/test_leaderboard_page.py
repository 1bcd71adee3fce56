"""The rendered leaderboard page in headless Chromium: it loads, shows the entries, and sorting (a header
click, triggered through the page's `#sort=` URL hash) reorders the rows with the page's own JavaScript.

Needs Debian's chromium (`apt-get install -y chromium`); skipped with that hint when it is absent.
"""
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from clbench.config import compose
from clbench.engine import run
from clbench.leaderboard import build_submission, save_submission
from clbench.leaderboard.render import render
from clbench.leaderboard.verify import verify_submission

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="headless Chromium not installed "
                                                        "(Debian: apt-get install -y chromium)")
FAST = ["benchmark=split-digits", "train.epochs=1", "wandb.mode=disabled", "progress=false"]
TRACK = "split-digits-v1"


class Rows(HTMLParser):
    """The rows of one table as they are in the DOM after the scripts ran: [(data-id, {column key: data-sort})]."""

    def __init__(self, table_id):
        super().__init__()
        self.table_id, self.in_table, self.keys, self.rows, self.attrs = table_id, False, [], [], {}
        self.col = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == self.table_id:
            self.in_table, self.attrs = True, a
        elif not self.in_table:
            return
        elif tag == "th":
            self.keys.append((a.get("data-key"), a.get("aria-sort")))
        elif tag == "tr" and "data-id" in a:
            self.rows.append((a["data-id"], {}))
            self.col = 0
        elif tag == "td" and self.rows:
            self.rows[-1][1][self.keys[self.col][0]] = a.get("data-sort")
            self.col += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self.in_table = False


def dump(page, tmp_path, fragment=""):
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--dump-dom", page.resolve().as_uri() + fragment]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "<table" in out.stdout, out.stderr[-2000:]
    parser = Rows(TRACK)
    parser.feed(out.stdout)
    return parser


@pytest.fixture(scope="module")
def board(tmp_path_factory, naive_digits_runs):
    """Three real entries on split-digits (1 epoch, seeds 0-2), one of them verified by a re-run."""
    root = tmp_path_factory.mktemp("page")
    folders = {"naive": naive_digits_runs[0].parent}
    for name, strategy, extra in (("replay", "replay", []), ("naive-low-lr", "naive", ["train.lr=0.01"])):
        for s in (0, 1, 2):
            run(compose([*FAST, f"strategy={strategy}", f"seed={s}", f"out={root / name}", *extra]), console=False)
        folders[name] = root / name
    subs = [save_submission(build_submission([folder], name=name), root / "leaderboard" / "submissions")
            for name, folder in folders.items()]
    assert verify_submission(subs[1], record_dir=root / "leaderboard" / "verifications")["passed"]
    out = render(root / "leaderboard" / "submissions", root / "leaderboard")
    return {"root": root, "page": out["html"], "subs": subs, "out": out}


def _acc(row):
    return float(row[1]["acc"])


def test_page_loads_and_shows_the_entries(board, tmp_path):
    t = dump(board["page"], tmp_path)
    ids = [r[0] for r in t.rows]
    assert len(ids) == 3 and {i.split("__")[1] for i in ids} == {"naive", "replay", "naive-low-lr"}
    accs = [_acc(r) for r in t.rows]
    assert accs == sorted(accs, reverse=True)                  # ranked by mean ACC
    assert t.rows[0][0].split("__")[1] == "replay"             # replay beats fine-tuning on split-digits
    assert t.attrs.get("data-sorted-by") == "acc:descending"  # server-side order, no sort clicked yet
    verified = {r[0].split("__")[1]: r[1]["verified"] for r in t.rows}
    assert verified == {"replay": "3", "naive": "2", "naive-low-lr": "2"}   # 3: verified, 2: not yet
    for r in t.rows:                                           # heatmap links resolve to the PNGs
        assert (board["page"].parent / "heatmaps" / f"{r[0]}.png").is_file()


def test_sorting_by_a_column_header_reorders_rows(board, tmp_path):
    before = [r[0] for r in dump(board["page"], tmp_path).rows]
    t = dump(board["page"], tmp_path, f"#sort={TRACK}:forgetting:asc")
    assert t.attrs.get("data-sorted-by") == "forgetting:ascending"          # set by the page's JS only
    assert ("forgetting", "ascending") in t.keys
    f = [float(r[1]["forgetting"]) for r in t.rows]
    assert f == sorted(f)
    # the low-lr run learns less and so forgets least: sorting moved it from last place to first
    assert [r[0] for r in t.rows] != before and t.rows[0][0].split("__")[1] == "naive-low-lr"
    t = dump(board["page"], tmp_path, f"#sort={TRACK}:acc:asc")             # second click: reversed
    accs = [_acc(r) for r in t.rows]
    assert t.attrs.get("data-sorted-by") == "acc:ascending" and accs == sorted(accs)
    t = dump(board["page"], tmp_path, f"#sort={TRACK}:method")              # text column, A-Z
    assert [r[0].split("__")[1] for r in t.rows] == ["naive", "naive-low-lr", "replay"]
