"""The start every data script shares (imported first): logs to stdout, and ``fairseq_srupp`` from
this checkout when it is not installed.

Logs (ours and fairseq-preprocess's) go to stdout, so that stderr only gets the one-line error.
"""
import logging
import sys
from pathlib import Path

logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                    stream=sys.stdout)
logging.getLogger("fairseq.tasks.text_to_speech").setLevel(logging.WARNING)  # its tensorboardX notice
try:
    import fairseq_srupp  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
