"""A worker never scores with weights other than the revision its jobs were enqueued for."""
from __future__ import annotations

import pytest

from tracker.errors import ConfigError
from workers.worker import check_revision


@pytest.mark.parametrize("wanted, loaded", [
    ("", "0123abcd" * 5),                  # unpinned hub model: any revision, recorded on the score
    ("0123abcd" * 5, "0123abcd" * 5),      # pinned and loaded
    ("0123abc", "0123abcd" * 5),           # a short sha pins its full sha
    ("gguf-sha256:1234", "gguf-sha256:1234"),
    ("local-feed", ""),                    # a backend that reports no revision cannot be checked
])
def test_matching_or_unpinned_revisions_pass(wanted, loaded):
    check_revision("m", wanted, loaded)


@pytest.mark.parametrize("wanted, loaded", [("0123abc", "fffff" * 8), ("tiny-seed1", "tiny-seed2"), ("v1.0", "0123abcd" * 5)])
def test_another_revision_is_refused_with_the_fix(wanted, loaded):
    with pytest.raises(ConfigError) as info:
        check_revision("org/model", wanted, loaded)
    assert wanted in str(info.value) and loaded in str(info.value) and "--revision" in str(info.value)
