"""A research agent: decompose a question into sub-questions, research them in parallel,
synthesise an answer, then critique it once."""

from __future__ import annotations

from typing import Any

from corral import Context, Limits, agent

from .turns import latest_user_text

ANSWER_TOKENS = 256  # per model call: a small model rambles on otherwise


@agent(name="research", limits=Limits(max_steps=60, run_timeout=600, max_total_tokens=100_000))
async def research(ctx: Context, input: Any) -> dict:
    """Input: {"question": ..., "width": 3} or a user message (as LangGraph clients send it)."""
    question = input.get("question") if isinstance(input, dict) and "question" in input else latest_user_text(input)
    if not isinstance(question, str) or not question.strip():
        raise ValueError("research needs a question: {'question': '...'} or a user message")
    width = int(input.get("width", 3)) if isinstance(input, dict) else 3
    plan = await ctx.chat([f"List {width} sub-questions, one per line, for: {question}"], max_tokens=ANSWER_TOKENS)
    subs = [line.strip("-• ").strip() for line in plan.text.splitlines() if line.strip()][:width]
    if len(subs) < width:  # a terse model: make the plan from the question itself
        subs += [f"{question} (aspect {i + 1})" for i in range(len(subs), width)]

    async def investigate(sub: str) -> str:
        notes = await ctx.chat([f"Answer briefly: {sub}"], max_tokens=ANSWER_TOKENS)
        ctx.emit("finding", {"sub_question": sub})
        return notes.text

    findings = await ctx.gather(*(investigate(s) for s in subs))
    draft = await ctx.chat(
        [f"Question: {question}\nFindings:\n" + "\n".join(findings) + "\nSynthesise an answer."],
        max_tokens=ANSWER_TOKENS,
    )
    critique = await ctx.chat([f"Critique this answer in one sentence: {draft.text}"], max_tokens=ANSWER_TOKENS)
    return {
        "question": question,
        "sub_questions": subs,
        "answer": draft.text,
        "critique": critique.text,
        "messages": [{"role": "assistant", "content": f"{draft.text}\n\nCritique: {critique.text}"}],
    }
