import io

from connectors.servicenow.doctor.findings import exit_code, ok, problem, redact, render, warning


def test_redaction_masks_every_secret_in_message_and_fix():
    findings = redact([problem("instance", "refused 'hunter22' for bot", "check hunter22"), ok("options", "fine")],
                      ["hunter22", "", None, "ab"])
    assert findings[0].message == "refused '***' for bot" and findings[0].fix == "check ***"
    assert findings[1].message == "fine"


def test_render_aligns_topics_and_prints_what_to_do_then_a_summary():
    out = io.StringIO()
    render([ok("options", "fine"), warning("endpoints", "in memory", "use redis\nor sql")], out)
    assert out.getvalue().splitlines() == [
        "ok       options    fine",
        "warning  endpoints  in memory",
        "                    -> use redis",
        "                    -> or sql",
        "",
        "1 ok, 1 warning(s), 0 problem(s)",
    ]


def test_only_a_problem_fails():
    assert exit_code([ok("a", "x"), warning("b", "y")]) == 0
    assert exit_code([ok("a", "x"), problem("b", "y")]) == 1


def test_redaction_masks_a_secret_that_stands_alone_not_one_inside_a_word():
    # The emulator's password is "secret"; the option message_hash_secret keeps its name.
    (finding,) = redact([ok("options", "No message_hash_secret; user:secret@host refused 'secret'")], ["secret"])
    assert finding.message == "No message_hash_secret; user:***@host refused '***'"
