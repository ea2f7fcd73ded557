from connectors.servicenow.markdown import escape_text, is_inert, web_url
from connectors.servicenow.urls import MAX_URL_CHARS, is_web_url


def test_plain_web_urls_pass():
    for url in ("https://example.com", "http://example.com:8080/a?b=1&c=2#d", "https://ex.test/a%20b", "HTTPS://EX.TEST/"):
        assert is_web_url(url), url


def test_anything_else_is_not_a_web_url():
    for url in (
        None, 42, "", "example.com", "/relative", "//example.com/x", "https:/x", "https://", "ftp://example.com/",
        "javascript:alert(1)", " https://example.com", "https://example.com/\n", "https://ex.test/\t",
        "https://ex.test/\u200e", "https://ex.test/\u2029", "https:\\\\ex.test", "https://ex.test\\@evil.test/",
        "https://[::1", "https://" + "a" * MAX_URL_CHARS,
    ):
        assert not is_web_url(url), url


def test_a_link_target_has_markdown_characters_encoded():
    assert web_url("https://ex.test/a_(b)<c>[d]'e\"`f") == "https://ex.test/a_%28b%29%3Cc%3E%5Bd%5D%27e%22%60f"
    assert web_url("javascript:alert(1)") is None


def test_escaped_text_can_form_no_link():
    assert escape_text("[a](b) ![c](d) <e> \\ `f` *g* &amp;") == "\\[a\\]\\(b\\) \\!\\[c\\]\\(d\\) \\<e\\> \\\\ \\`f\\` \\*g\\* \\&amp;"
    assert escape_text("two\n\nparagraphs") == "two\n\nparagraphs"


def test_inert_values():
    assert is_inert("5 minutes") and is_inert("Beth (IT)") and is_inert("12:00")
    for value in ("[x]", "<b>", "a\\b", "line\nbreak", "tab\tx"):
        assert not is_inert(value), value
