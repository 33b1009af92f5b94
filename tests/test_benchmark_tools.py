"""Helpers of the benchmarks that are not timings: the collective bytes read from a compiled HLO module."""
from sm_jax.aot.hlo import collectives

WHILE = ('  %while.5 = (s32[], f32[2,4]{1,0}) while((s32[], f32[2,4]{1,0}) %init), condition=%cond.2, '
         'body=%body.2, backend_config={"known_trip_count":{"n":"3"}}')
HLO = """HloModule jit_step, entry_computation_layout={(f32[4]{0})->f32[]}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %add.1 = f32[] add(f32[] %x, f32[] %y)
}

%body.2 (p: (s32[], f32[2,4])) -> (s32[], f32[2,4]) {
  %p = (s32[], f32[2,4]{1,0}) parameter(0)
  %g = f32[1,4]{1,0} get-tuple-element((s32[], f32[2,4]{1,0}) %p), index=1
  %all-gather.3 = f32[2,4]{1,0} all-gather(f32[1,4]{1,0} %g), channel_id=2, replica_groups={{0,1}}, dimensions={0}
  ROOT %t = (s32[], f32[2,4]{1,0}) tuple(s32[] %i, f32[2,4]{1,0} %all-gather.3)
}

%cond.2 (p: (s32[], f32[2,4])) -> pred[] {
  ROOT %lt = pred[] compare(s32[] %i, s32[] %n), direction=LT
}

ENTRY %main.9 (Arg_0.1: f32[4]) -> f32[] {
  %Arg_0.1 = f32[4]{0} parameter(0)
  %all-reduce.1 = f32[] all-reduce(f32[] %s), channel_id=1, replica_groups={{0,1}}, to_apply=%add
{while_line}
  ROOT %r = f32[] copy(f32[] %all-reduce.1)
}
""".replace("{while_line}", WHILE)


def test_collectives_counts_loop_bodies_by_their_trip_count():
    # entry: one all-reduce of a float (4 bytes); the loop body's all-gather of f32[2,4] (32 bytes) runs 3 times
    assert collectives(HLO) == {"all-reduce": [1, 4], "all-gather": [3, 96]}
