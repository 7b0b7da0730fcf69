"""Drives lynx-worker's OpenAI-compatible API with the official `openai` package.

Usage: openai_sdk.py SCENARIO BASE_URL API_KEY IMAGE
Prints one JSON object with what the scenario saw; the Rust test checks it.
"""
import base64
import json
import sys

import openai

scenario, base_url, api_key, image = sys.argv[1:5]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)
with open(image, "rb") as f:
    data_uri = "data:image/png;base64," + base64.b64encode(f.read()).decode()


def messages(prompt, uri=data_uri):
    return [{"role": "user", "content": [
        {"type": "text", "text": prompt},
        {"type": "image_url", "image_url": {"url": uri}},
    ]}]


def error(e):
    return {"status": e.status_code, "type": type(e).__name__, "body": e.body}


out = {}
if scenario == "chat":
    model = client.models.list().data[0].id
    out["model"] = model
    whole = client.chat.completions.create(
        model=model, messages=messages("What is in the image?"), temperature=0, max_tokens=8)
    out["text"] = whole.choices[0].message.content
    out["finish_reason"] = whole.choices[0].finish_reason
    out["usage"] = whole.usage.model_dump()
    pieces, usage, finish = [], None, None
    for chunk in client.chat.completions.create(
            model=model, messages=messages("What is in the image?"), temperature=0, max_tokens=8,
            stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    out["streamed"] = "".join(pieces)
    out["streamed_usage"] = usage
    out["streamed_finish_reason"] = finish
    try:
        client.chat.completions.create(
            model=model, messages=messages("hi", "data:image/png;base64,bm90IGFuIGltYWdl"))
    except openai.APIStatusError as e:
        out["bad_image"] = error(e)
elif scenario == "auth":
    try:
        client.models.list()
    except openai.APIStatusError as e:
        out["models"] = error(e)
    try:
        client.chat.completions.create(model="lynx-vicuna-7b", messages=messages("hi"))
    except openai.APIStatusError as e:
        out["chat"] = error(e)
elif scenario == "queue_full":
    try:
        client.chat.completions.create(model="lynx-vicuna-7b", messages=messages("hi"), max_tokens=4)
    except openai.APIStatusError as e:
        out["chat"] = error(e)
elif scenario == "disconnect":
    stream = client.chat.completions.create(
        model="lynx-vicuna-7b", messages=messages("Describe the image."), temperature=0,
        max_tokens=200, stream=True)
    first = next(iter(stream))
    out["first_role"] = first.choices[0].delta.role
    stream.close()
print(json.dumps(out))
