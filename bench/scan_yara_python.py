"""The libyara baseline of bench/scan.rs: the same rules and files, scanned with yara-python.

Measured with yara-python 4.5.4 (libyara 4.5.4): .venv/bin/pip install yara-python==4.5.4

Run by target/release/examples/bench_scan as `python scan_yara_python.py DIR`. DIR holds
job.json ({"threads", "timeout", "sources": [namespace, ...], "files": [path, ...]}) and
sources/<namespace>.yar.

Each source is compiled alone first (libyara rejects some that YARA-X accepts) and dropped if it
fails; then the rest are compiled together, one namespace each, with the same external variables
as the server. Every file is read once and scanned once to warm up; then one JSON line tells what
was compiled, and each `pass` line read from stdin scans every file with `threads` threads
(yara-python releases the GIL while libyara scans) and answers with one JSON line. Ends at the
end of stdin.
"""

import itertools
import json
import os
import sys
import threading
import time

try:
    import yara
except ImportError as e:
    sys.exit(f"yara-python is not installed: {e}")

EXTERNALS = {name: "" for name in ("filename", "filepath", "extension", "filetype", "owner")}
MAX_TOGETHER_DROPS = 20


def globals_of(path):
    """The external variables the server sets from a file name (ScanGlobals::from_name)."""
    filename = path.replace("\\", "/").rsplit("/", 1)[-1]
    dot = filename.rfind(".")
    extension = filename[dot + 1 :].lower() if 0 <= dot < len(filename) - 1 else ""
    return {"filename": filename, "filepath": path, "extension": extension}


def compiles(sources):
    try:
        return yara.compile(sources=sources, externals=EXTERNALS)
    except yara.Error:
        return None


def compile_all(sources):
    """Compiles what libyara accepts: (rules, kept namespaces, rejected alone, together)."""
    alone = [ns for ns, text in sources.items() if compiles({ns: text}) is not None]
    rejected_alone = len(sources) - len(alone)
    rejected_together = 0
    while True:
        kept = {ns: sources[ns] for ns in alone}
        rules = compiles(kept)
        if rules is not None:
            return rules, kept, rejected_alone, rejected_together
        if rejected_together >= MAX_TOGETHER_DROPS:
            sys.exit("libyara rejects the sources together; too many conflicts")
        # The shortest failing prefix ends with a source that conflicts with an earlier one.
        low, high = 1, len(alone)
        while low < high:
            mid = (low + high) // 2
            if compiles({ns: sources[ns] for ns in alone[:mid]}) is None:
                high = mid
            else:
                low = mid + 1
        del alone[low - 1]
        rejected_together += 1


def scan_pass(rules, files, threads, timeout):
    counter = itertools.count()
    matches = [0] * len(files)
    problems = {"timed_out": 0, "errors": 0}
    lock = threading.Lock()

    def worker():
        while True:
            i = next(counter)
            if i >= len(files):
                return
            path, data = files[i]
            try:
                found = rules.match(data=data, externals=globals_of(path), timeout=timeout)
                matches[i] = len(found)
            except yara.TimeoutError:
                with lock:
                    problems["timed_out"] += 1
            except yara.Error as e:
                with lock:
                    problems["errors"] += 1
                print(f"yara-python: {path}: {e}", file=sys.stderr)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    return {"elapsed_s": elapsed, "matches": matches, **problems}


def answer(value):
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def main():
    work = sys.argv[1]
    with open(os.path.join(work, "job.json")) as f:
        job = json.load(f)
    sources = {}
    for ns in job["sources"]:
        with open(os.path.join(work, "sources", f"{ns}.yar"), encoding="utf-8") as f:
            sources[ns] = f.read()
    started = time.perf_counter()
    rules, kept, rejected_alone, rejected_together = compile_all(sources)
    compile_s = time.perf_counter() - started
    files = []
    for path in job["files"]:
        with open(path, "rb") as f:
            files.append((path, f.read()))
    threads, timeout = job["threads"], job["timeout"]
    scan_pass(rules, files, threads, timeout)
    answer(
        {
            "yara_version": yara.__version__,
            "kept": len(kept),
            "rejected_alone": rejected_alone,
            "rejected_together": rejected_together,
            "rules": sum(1 for _ in rules),
            "compile_s": compile_s,
        }
    )
    for line in sys.stdin:
        if line.strip() == "pass":
            answer(scan_pass(rules, files, threads, timeout))


if __name__ == "__main__":
    main()
