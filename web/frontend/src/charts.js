// ECharts, tree-shaken to what the dashboard draws; loaded only by the chart pages.
import * as echarts from "echarts/core";
import { BarChart, CustomChart, GaugeChart, GraphChart, LineChart } from "echarts/charts";
import {
  DataZoomComponent, GridComponent, LegendComponent, MarkLineComponent, TitleComponent, TooltipComponent,
} from "echarts/components";
import { CanvasRenderer } from "echarts/renderers";

echarts.use([BarChart, CustomChart, GaugeChart, GraphChart, LineChart, DataZoomComponent, GridComponent,
  LegendComponent, MarkLineComponent, TitleComponent, TooltipComponent, CanvasRenderer]);

export { echarts };

export const STATUS_COLORS = {
  COMPLETED: "#2e9d57", FAILED: "#d64545", RETRYING: "#e8912d", RUNNING: "#3b82f6", PENDING: "#b8bec8",
  SKIPPED: "#9aa3ad", CANCELLED: "#7b7f86", COMPENSATING: "#e9c229", COMPENSATED: "#d9b310",
};

export function chartOn(el) {
  const chart = echarts.getInstanceByDom(el) || echarts.init(el, null, { renderer: "canvas" });
  const resize = () => chart.resize();
  window.addEventListener("resize", resize);
  chart.__cfResize = resize;
  return chart;
}

export function dispose(chart) {
  if (!chart) return;
  window.removeEventListener("resize", chart.__cfResize);
  chart.dispose();
}
