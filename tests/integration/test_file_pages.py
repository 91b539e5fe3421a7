"""Paging through files while one is deleted: `after=` naming the file just deleted (the last id
of the page a client holds) goes on from where it stood, on both APIs, instead of a 404; a tenant
cannot page from another tenant's deleted file. Before the fix: 404 `no file …`."""

from __future__ import annotations

from tests.support.data import chat_rows, jsonl


async def test_paging_on_from_a_deleted_file(api) -> None:  # noqa: ANN001
    ids = []
    for i in range(4):
        r = await api.client.post("/files", files={"file": (f"{i}.jsonl", jsonl(chat_rows(3)))}, headers=api.auth())
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    newest_first = ids[::-1]
    first = (await api.client.get("/files?limit=2", headers=api.auth())).json()
    assert [f["id"] for f in first["data"]] == newest_first[:2] and first["has_more"]
    gone = first["data"][-1]["id"]
    assert (await api.client.delete(f"/files/{gone}", headers=api.auth())).status_code == 204
    r = await api.client.get(f"/files?limit=2&after={gone}", headers=api.auth())
    assert r.status_code == 200, r.text
    assert [f["id"] for f in r.json()["data"]] == newest_first[2:]
    r = await api.client.get(f"/v1/files?limit=2&after={gone}", headers=api.auth())
    assert r.status_code == 200, r.text
    assert [f["id"] for f in r.json()["data"]] == newest_first[2:]
    # Another tenant learns nothing from the id: the same 404 as an id that never existed.
    for after in (gone, "file-000000000000000000000000"):
        r = await api.client.get(f"/files?after={after}", headers=api.auth("globex"))
        assert r.status_code == 404 and r.json()["error"]["param"] == "after"
