import io
import json
import logging

import pytest

from insignia.daemon.logs import configure_logging, get_logger


def test_json_lines_include_stdlib_records() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    get_logger("insignia.test").info("signed", spiffe_id="spiffe://td/a")
    get_logger("insignia.test").debug("hidden")
    logging.getLogger("hypercorn.error").warning("from stdlib")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["signed", "from stdlib"]
    assert lines[0]["spiffe_id"] == "spiffe://td/a"
    assert lines[0]["level"] == "info"
    assert lines[1]["logger"] == "hypercorn.error"


def test_refuses_unknown_level_and_format() -> None:
    with pytest.raises(ValueError, match="log level 'loud'"):
        configure_logging("loud", "json")
    with pytest.raises(ValueError, match="log format 'xml'"):
        configure_logging("info", "xml")
