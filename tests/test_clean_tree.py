"""The suite writes only to scratch folders: afterwards git sees the repository as before."""

import pytest


@pytest.mark.after_all
def test_the_suite_leaves_the_repository_as_it_found_it(changes_since_session_start):
    if changes_since_session_start is None:
        pytest.skip("not a git checkout")
    assert not changes_since_session_start, (
        "the test suite wrote into the repository:\n" + "\n".join(changes_since_session_start))
