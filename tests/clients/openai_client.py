"""The official `openai` package against a running lorastream: plain and
streamed completions, models.list(), and errors raised as the client's own
exception types. Usage: openai_client.py BASE_URL API_KEY"""
import sys

import openai
from openai import OpenAI

base, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, api_key=key, max_retries=0, timeout=60)

ids = [m.id for m in client.models.list()]
assert "lorastream" in ids and "base" in ids, ids

r = client.chat.completions.create(
    model="lorastream",
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
    max_tokens=8,
    temperature=0,
)
text = r.choices[0].message.content
assert isinstance(text, str), r
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
assert r.choices[0].finish_reason in ("stop", "length"), r

parts = []
finish = None
for chunk in client.chat.completions.create(
    model="lorastream",
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
    max_tokens=8,
    temperature=0,
    stream=True,
):
    if chunk.choices:
        parts.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
assert "".join(parts) == text, ("".join(parts), text)
assert finish in ("stop", "length"), finish

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.status_code == 404

try:
    client.chat.completions.create(model="lorastream", messages=[], max_tokens=4)
    raise SystemExit("expected BadRequestError")
except openai.BadRequestError as e:
    assert e.status_code == 400

bad = OpenAI(base_url=base, api_key="wrong", max_retries=0)
try:
    bad.models.list()
    raise SystemExit("expected AuthenticationError")
except openai.AuthenticationError:
    pass

print("openai client: ok")
