"""A research agent: decompose a question into sub-questions, research them in parallel,
synthesise an answer, then critique it once."""

from __future__ import annotations

from corral import Context, Limits, agent


@agent(name="research", limits=Limits(max_steps=60, run_timeout=600, max_total_tokens=100_000))
async def research(ctx: Context, input: dict) -> dict:
    question = input["question"]
    width = int(input.get("width", 3))
    plan = await ctx.chat([f"List {width} sub-questions, one per line, for: {question}"])
    subs = [line.strip("-• ").strip() for line in plan.text.splitlines() if line.strip()][:width]
    if len(subs) < width:  # a terse model: make the plan from the question itself
        subs += [f"{question} (aspect {i + 1})" for i in range(len(subs), width)]

    async def investigate(sub: str) -> str:
        notes = await ctx.chat([f"Answer briefly: {sub}"])
        ctx.emit("finding", {"sub_question": sub})
        return notes.text

    findings = await ctx.gather(*(investigate(s) for s in subs))
    draft = await ctx.chat([f"Question: {question}\nFindings:\n" + "\n".join(findings) + "\nSynthesise an answer."])
    critique = await ctx.chat([f"Critique this answer in one sentence: {draft.text}"])
    return {"question": question, "sub_questions": subs, "answer": draft.text, "critique": critique.text}
