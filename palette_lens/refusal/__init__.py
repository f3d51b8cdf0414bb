"""refusal"""
