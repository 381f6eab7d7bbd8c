"""MiniMind Notes 的课程模块包（各章节实验与公共工具 modules.common）。"""
