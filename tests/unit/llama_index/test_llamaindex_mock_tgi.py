"""Every wrapper in every form against ``TGIAligner`` over the mock TGI transport (no sockets)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from llamaindex_scenarios import SCENARIOS, check

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.backends.testing import MockTGIServer, mock_tgi


@pytest.fixture(params=["diffpo-server", "plain-tgi"])
def server(request: pytest.FixtureRequest) -> Iterator[MockTGIServer]:
    # "plain-tgi" offers no /diffpo/align route: TGIAligner builds the prompt and calls /generate.
    with mock_tgi(align_route=request.param == "diffpo-server") as server:
        yield server


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_scenario(name: str, server: MockTGIServer) -> None:
    aligner = TGIAligner("http://mock-tgi", template="chatml")
    outcome = await SCENARIOS[name](aligner)
    check(outcome, aligner)
    paths = {r.url.path for r in server.requests}
    if server.align_route:
        assert "/diffpo/align" in paths
    else:
        assert "/diffpo/align" not in paths
        assert paths & {"/", "/generate", "/generate_stream"}


async def test_fake_aligner_runs_the_same_scenarios() -> None:
    from llamaindex_fakes import FakeAligner

    for scenario in SCENARIOS.values():
        aligner = FakeAligner()
        check(await scenario(aligner), aligner)
